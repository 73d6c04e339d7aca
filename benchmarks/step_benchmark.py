"""One denoising step of the accelerated networks, and the kernel choices behind it, timed in CUDA graphs.

``gpu_benchmark.py`` times whole requests through sd_core's API; this times what a step is made of, as the
graph path replays it: the prepared UNet and ControlNet of a family (real-size, random fp16 weights, batch 2
for classifier-free guidance, 512² for SD1.5, 1024² for SDXL) captured together in one CUDA graph, and the
ControlNet's conditioning embedding alone (which sd_core runs once per generation, not every step:
sd_core/controlnet_condition.py). With ``--kernels`` also the measurements behind constants in sd_core: the
SDPA backends on SD's attention shapes, LayerNorm tiles (sd_core/layer_norm.py), and GroupNorm's two paths,
three kernels or each group whole, with the latter's tiles (sd_core/group_norm.py).

    python benchmarks/step_benchmark.py --families sd1 sdxl --kernels --out benchmarks/results/steps.json
    python benchmarks/step_benchmark.py --families --kernels "group norm chunks" upsampling --out ...
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from group_norm_benchmark import graphed_ms
from profile_ops import build_denoisers, denoising_step

from sd_core import geglu, group_norm, layer_norm, upsample
from sd_core.acceleration import CudaGraphAccelerator

# GroupNorm shapes (channels, side) of SD1.5's and SDXL's UNets and SD's VAE decoder, batch 2, 32 groups.
GROUP_NORM_SHAPES = [
    (320, 64), (640, 64), (960, 64), (640, 32), (960, 32), (1280, 32), (1920, 32), (1280, 16), (1920, 16),
    (2560, 16), (1280, 8), (2560, 8), (320, 128), (640, 128), (512, 64), (512, 128), (256, 256),
]  # fmt: skip
LAYER_NORM_SHAPES = [(2, 4096, 320), (2, 1024, 640), (2, 256, 1280), (2, 4096, 640), (2, 1024, 1280)]
# A feed-forward's first projection: (rows, input width, GEGLU's output width), batch 2, by family and latent side.
FEED_FORWARD_SHAPES = {
    "sd1 64²": (8192, 320, 1280), "sd1 32²": (2048, 640, 2560), "sd1 16²": (512, 1280, 5120),
    "sdxl 64²": (8192, 640, 2560), "sdxl 32²": (2048, 1280, 5120),
}  # fmt: skip
# (batch, heads, queries, head width, keys, dtype): SD1.5's and SDXL's self- and cross-attention, and the VAE's
# one-head attention at 512² (SD1.5, fp16) and 1024² (SDXL, fp32).
ATTENTION_SHAPES = {
    "sd1 64²": (2, 8, 4096, 40, 4096, torch.float16),
    "sd1 32²": (2, 8, 1024, 80, 1024, torch.float16),
    "sd1 cross": (2, 8, 4096, 40, 77, torch.float16),
    "sdxl 64²": (2, 10, 4096, 64, 4096, torch.float16),
    "sdxl 32²": (2, 20, 1024, 64, 1024, torch.float16),
    "sdxl cross": (2, 20, 1024, 64, 77, torch.float16),
    "vae 64²": (1, 1, 4096, 512, 4096, torch.float16),
    "sdxl vae 128²": (1, 1, 16384, 512, 16384, torch.float32),
}
# (images, channels, side, dtype) of the VAE's GroupNorms (one image) and of a UNet's (two): the statistics chunk
# sweep (sd_core/group_norm.py MAX_CHUNKS).
CHUNK_SHAPES = [
    (1, 128, 512, torch.float16), (1, 256, 256, torch.float16), (1, 512, 128, torch.float16),
    (1, 512, 64, torch.float16), (2, 320, 64, torch.float16), (2, 640, 32, torch.float16),
    (2, 1280, 16, torch.float16), (2, 640, 128, torch.float16), (1, 128, 1024, torch.float32),
    (1, 256, 512, torch.float32), (1, 512, 256, torch.float32),
]  # fmt: skip
# (images, channels, side) of the upsamplers' inputs: SD1.5's UNet, its VAE decoder (one image), SDXL's UNet.
UPSAMPLE_SHAPES = [(2, 1280, 8), (2, 1280, 16), (2, 640, 32), (1, 512, 64), (1, 512, 128), (1, 256, 256), (2, 640, 64)]
# ... and with dtypes: SD1.5's and SDXL's UNets (fp16), SD1.5's VAE decoder (fp16) and SDXL's (fp32).
HALF, FULL = torch.float16, torch.float32
PHASE_SHAPES = [
    (2, 1280, 8, HALF), (2, 1280, 16, HALF), (2, 640, 32, HALF), (2, 1280, 32, HALF), (2, 640, 64, HALF),
    (1, 512, 64, HALF), (1, 512, 128, HALF), (1, 256, 256, HALF), (1, 512, 128, FULL), (1, 512, 256, FULL),
    (1, 256, 512, FULL),
]  # fmt: skip


def step(family: str) -> dict[str, float]:
    unet, controlnet = build_denoisers(family)
    accelerator = CudaGraphAccelerator()
    for module in (unet, controlnet):
        accelerator._prepare(module)
    size = 512 if family == "sd1" else 1024
    control = torch.rand(2, 3, size, size, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        whole = graphed_ms(denoising_step(unet, controlnet, family))
        embedding = graphed_ms(functools.partial(controlnet.controlnet_cond_embedding, control))
    del unet, controlnet
    torch.cuda.empty_cache()
    return {"graph_step_ms": whole, "cond_embedding_ms": embedding, "step_without_embedding_ms": whole - embedding}


def attention_backends() -> dict[str, dict[str, Any]]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    results: dict[str, dict[str, Any]] = {}
    backends = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
    for name, (batch, heads, queries, width, keys, dtype) in ATTENTION_SHAPES.items():
        like = {"device": "cuda", "dtype": dtype}
        q = torch.randn(batch, heads, queries, width, **like)
        k, v = (torch.randn(batch, heads, keys, width, **like) for _ in range(2))
        results[name] = {}
        for backend in backends:
            try:
                with sdpa_kernel([backend]):
                    results[name][backend.name] = graphed_ms(functools.partial(F.scaled_dot_product_attention, q, k, v))
            except RuntimeError as error:  # a backend that does not take this shape
                results[name][backend.name] = str(error)[:80]
    return results


def layer_norm_tiles() -> dict[str, dict[str, float]]:
    tile, warps = layer_norm.TILE, layer_norm.WARPS
    results: dict[str, dict[str, float]] = {}
    for shape in LAYER_NORM_SHAPES:
        half = {"device": "cuda", "dtype": torch.float16}
        x, residual, bias = torch.randn(shape, **half), torch.randn(shape, **half), torch.randn(shape[-1], **half)
        norm = torch.nn.LayerNorm(shape[-1], **half)
        fused = functools.partial(layer_norm.add_layer_norm, x, bias, residual, norm)
        with torch.no_grad():
            row = {"pytorch add + norm": graphed_ms(functools.partial(_add_then_norm, x, bias, residual, norm))}
            for layer_norm.TILE in (1024, 2048, 4096, 8192):
                for layer_norm.WARPS in (2, 4, 8):
                    row[f"tile {layer_norm.TILE}, {layer_norm.WARPS} warps"] = graphed_ms(fused)
        results[str(shape)] = row
    layer_norm.TILE, layer_norm.WARPS = tile, warps
    return results


def group_norm_paths() -> dict[str, dict[str, float]]:
    saved = group_norm.SMALL_GROUP, group_norm.SMALL_GROUP_TILE, group_norm.SMALL_GROUP_WARPS
    results: dict[str, dict[str, float]] = {}
    for channels, side in GROUP_NORM_SHAPES:
        half = {"device": "cuda", "dtype": torch.float16}
        x = torch.randn(2, channels, side, side, **half).to(memory_format=torch.channels_last)
        weight, bias = torch.randn(channels, **half), torch.randn(channels, **half)
        shifts = (torch.randn(channels, **half), torch.randn(2, channels, **half))
        normalise = functools.partial(group_norm.group_norm_channels_last, x, 32, weight, bias, 1e-5, shifts, True)
        row = {"elements a group": side * side * channels // 32}
        group_norm.SMALL_GROUP = 0
        row["three kernels"] = graphed_ms(normalise)
        group_norm.SMALL_GROUP = 2**62
        for group_norm.SMALL_GROUP_TILE in (1024, 2048, 4096):
            for group_norm.SMALL_GROUP_WARPS in (2, 4, 8):
                key = f"whole, tile {group_norm.SMALL_GROUP_TILE}, {group_norm.SMALL_GROUP_WARPS} warps"
                row[key] = graphed_ms(normalise)
        results[f"{channels}x{side}²"] = row
    group_norm.SMALL_GROUP, group_norm.SMALL_GROUP_TILE, group_norm.SMALL_GROUP_WARPS = saved
    return results


def group_norm_chunks() -> dict[str, dict[str, float]]:
    saved = group_norm.MAX_CHUNKS, group_norm.SMALL_GROUP
    group_norm.SMALL_GROUP = 0  # the three-kernel path throughout
    results: dict[str, dict[str, float]] = {}
    for images, channels, side, dtype in CHUNK_SHAPES:
        like = {"device": "cuda", "dtype": dtype}
        x = torch.randn(images, channels, side, side, **like).to(memory_format=torch.channels_last)
        weight, bias = torch.randn(channels, **like), torch.randn(channels, **like)
        normalise = functools.partial(group_norm.group_norm_channels_last, x, 32, weight, bias, 1e-5, silu=True)
        row = {
            "pytorch group_norm (NCHW)": graphed_ms(functools.partial(F.group_norm, x.contiguous(), 32, weight, bias))
        }
        for group_norm.MAX_CHUNKS in (64, 128, 256, 512, 1024):
            row[f"max chunks {group_norm.MAX_CHUNKS}"] = graphed_ms(normalise)
        results[f"{images}x{channels}x{side}² {str(dtype)[6:]}"] = row
    group_norm.MAX_CHUNKS, group_norm.SMALL_GROUP = saved
    return results


def upsampling() -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for images, channels, side in UPSAMPLE_SHAPES:
        x = torch.randn(images, channels, side, side, device="cuda", dtype=torch.float16)
        x = x.to(memory_format=torch.channels_last)
        interpolate = functools.partial(F.interpolate, x, scale_factor=2.0, mode="nearest")
        results[f"{images}x{channels}x{side}²"] = {
            "pytorch interpolate": graphed_ms(interpolate),
            "triton": graphed_ms(functools.partial(upsample.upsample_nearest_2x, x)),
        }
    return results


def _add_then_norm(x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, norm: torch.nn.LayerNorm):
    return norm((x + bias) + residual)


def upsampling_as_phase_convolutions() -> dict[str, dict[str, float]]:
    """Nearest 2x upsampling then a 3x3 convolution (what every upsampler does), against the same as one 2x2
    convolution of the small input with four output phases (4/9 of the products), then interleaved. Measured
    and not taken: faster only from 64² at 640 channels up, a few ms a request at most (benchmarks/README.md)."""
    results: dict[str, dict[str, float]] = {}
    for images, channels, side, dtype in PHASE_SHAPES:
        x = torch.randn(images, channels, side, side, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
        weight = (torch.randn(channels, channels, 3, 3, device="cuda") / (3 * channels**0.5)).to(dtype)
        weight, bias = weight.to(memory_format=torch.channels_last), torch.randn(channels, device="cuda", dtype=dtype)
        phases, phase_bias = _phase_weights(weight), bias.repeat(4)
        with torch.no_grad():
            exact = F.conv2d(
                F.interpolate(x.double(), scale_factor=2.0, mode="nearest"), weight.double(), bias.double(), padding=1
            )
            today = functools.partial(_upsample_then_convolve, x, weight, bias)
            phased = functools.partial(_phase_convolution, x, phases, phase_bias, channels)
            results[f"{images}x{channels}x{side}² {str(dtype).removeprefix('torch.')}"] = {
                "upsample then 3x3": graphed_ms(today),
                "2x2 phases, interleaved": graphed_ms(phased),
                "2x2 phases alone": graphed_ms(functools.partial(F.conv2d, x, phases, phase_bias, padding=1)),
                "error upsample then 3x3": (today().double() - exact).abs().max().item(),
                "error 2x2 phases": (phased().double() - exact).abs().max().item(),
            }
    return results


def _upsample_then_convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.conv2d(upsample.upsample_nearest_2x(x), weight, bias, padding=1)


def _phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 kernel over a nearest-upsampled input as four 2x2 kernels over the input, one per output phase."""

    def fold(kernel: torch.Tensor, phase: int, dim: int) -> torch.Tensor:
        first, middle, last = kernel.unbind(dim)
        return torch.stack((first, middle + last) if phase == 0 else (first + middle, last), dim)

    blocks = [fold(fold(weight.float(), a, 2), b, 3) for a in (0, 1) for b in (0, 1)]
    return torch.cat(blocks).to(weight.dtype).contiguous(memory_format=torch.channels_last)


def _phase_convolution(x: torch.Tensor, phases: torch.Tensor, bias: torch.Tensor, channels: int) -> torch.Tensor:
    images, _, height, width = x.shape
    y = F.conv2d(x, phases, bias, padding=1).permute(0, 2, 3, 1)  # (images, height + 1, width + 1, 4 channels)
    shape = (images, channels, 2 * height, 2 * width)
    out = torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    interleaved = out.permute(0, 2, 3, 1).view(images, height, 2, width, 2, channels)
    for a in (0, 1):
        for b in (0, 1):
            block = slice((2 * a + b) * channels, (2 * a + b + 1) * channels)
            interleaved[:, :, a, :, b, :].copy_(y[:, a : a + height, b : b + width, block])
    return out


def geglu_in_the_projection() -> dict[str, dict[str, Any]]:
    """A feed-forward's first projection (cuBLAS) then sd_core's GEGLU kernel, against both in one Triton kernel
    (projection_geglu.py) with each of its tiles. Measured and not taken: Triton's product loses to cuBLAS's
    about what the fused epilogue saves at SDXL's widths."""
    from projection_geglu import TILES, projection_geglu

    results: dict[str, dict[str, Any]] = {}
    for name, (rows, depth, inner) in FEED_FORWARD_SHAPES.items():
        x = torch.randn(rows, depth, device="cuda", dtype=torch.float16)
        weight = torch.randn(2 * inner, depth, device="cuda", dtype=torch.float16) / depth**0.5
        bias = torch.randn(2 * inner, device="cuda", dtype=torch.float16) / 10
        exact = geglu.plain_geglu(F.linear(x.double(), weight.double(), bias.double()))

        def today(x=x, weight=weight, bias=bias) -> torch.Tensor:
            return geglu.geglu(F.linear(x, weight, bias))

        row: dict[str, Any] = {
            "projection alone": graphed_ms(functools.partial(F.linear, x, weight, bias)),
            "projection then geglu": graphed_ms(today),
            "error projection then geglu": (today().double() - exact).abs().max().item(),
        }
        for tile in TILES:
            fused = functools.partial(projection_geglu, x, weight, bias, tile)
            row[f"one kernel {tile}"] = graphed_ms(fused)
            row[f"error one kernel {tile}"] = (fused().double() - exact).abs().max().item()
        results[name] = row
    return results


def controlnet_alongside() -> dict[str, dict[str, float]]:
    """A ControlNet + UNet step through the accelerator's own wrappers (graphs, the ControlNet's outputs handed
    over), each network's graph in turn against the ControlNet inside the UNet's graph (acceleration.py)."""
    results: dict[str, dict[str, float]] = {}
    for family in ("sd1", "sdxl"):
        unet, controlnet = build_denoisers(family)
        step = denoising_step(unet, controlnet, family)
        outputs: dict[str, torch.Tensor] = {}
        for name, alongside in (("in turn", False), ("alongside", True)):
            accelerator = CudaGraphAccelerator(controlnet_alongside=alongside)
            for module in (unet, controlnet):
                accelerator._prepare(module)
            with torch.no_grad(), accelerator._installed(controlnet, "", True), accelerator._installed(unet, ""):
                for _ in range(3):
                    outputs[name] = step().float()
                results[f"{family} {name} ms"] = wall_ms(step)
            accelerator.reset()
        results[f"{family} max difference"] = (outputs["in turn"] - outputs["alongside"]).abs().max().item()
        del unet, controlnet, step
        torch.cuda.empty_cache()
    return results


def wall_ms(function, calls: int = 40) -> float:
    """GPU time of ``calls`` calls in a row (each launching its own graphs), per call, the best of five."""
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            function()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return min(times)


SWEEPS = {
    "attention": attention_backends,
    "layer norm": layer_norm_tiles,
    "group norm": group_norm_paths,
    "group norm chunks": group_norm_chunks,
    "upsampling": upsampling,
    "upsampling as phase convolutions": upsampling_as_phase_convolutions,
    "controlnet alongside": controlnet_alongside,
    "geglu in the projection": geglu_in_the_projection,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="*", default=["sd1", "sdxl"], choices=["sd1", "sdxl"])
    parser.add_argument("--kernels", nargs="*", choices=list(SWEEPS), help="also these sweeps (all if none named)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report: dict[str, Any] = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "unit": "ms"}
    parts = {f"step {family}": (lambda family=family: step(family)) for family in args.families}
    if args.kernels is not None:
        parts |= {name: SWEEPS[name] for name in args.kernels or SWEEPS}
    for name, measure in parts.items():
        report[name] = measure()
        print(name, json.dumps(report[name]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
