"""GroupNorm on channels-last activations: PyTorch's group_norm against sd_core's Triton kernels, on a CUDA GPU.

The shapes are those of SD1.5 at 512² (UNet with classifier-free guidance, batch 2; VAE decoder, batch 1) and
SDXL's UNet at 1024². Each is timed inside a CUDA graph (how the accelerated path runs it) over 200 replays,
and checked against an fp32 reference. A ResNet block's second norm is timed too: stock's bias add, time
embedding add, GroupNorm and SiLU against the one Triton GroupNorm that folds them (sd_core/resnet_block.py).

    python benchmarks/group_norm_benchmark.py --out benchmarks/results/group_norm.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sd_core import group_norm
from sd_core.group_norm import group_norm_channels_last

SHAPES = {
    "sd15 unet 320x64²": (2, 320, 64, 64),
    "sd15 unet 640x32²": (2, 640, 32, 32),
    "sd15 unet 1280x16²": (2, 1280, 16, 16),
    "sd15 unet 1280x8²": (2, 1280, 8, 8),
    "sd15 unet 960x64²": (2, 960, 64, 64),
    "sd15 vae 512x64²": (1, 512, 64, 64),
    "sd15 vae 512x256²": (1, 512, 256, 256),
    "sd15 vae 128x512²": (1, 128, 512, 512),
    "sdxl unet 320x128²": (2, 320, 128, 128),
    "sdxl unet 1280x32²": (2, 1280, 32, 32),
}
REPLAYS = 200


def graphed_ms(function) -> float:
    """GPU time of one call, replayed in a CUDA graph (launch cost excluded, as on the accelerated path)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            function()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        function()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(REPLAYS):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / REPLAYS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiles", type=int, nargs="+", default=[group_norm.TILE], help="tile sizes to try")
    parser.add_argument("--warps", type=int, nargs="+", default=[group_norm.WARPS], help="warp counts to try")
    parser.add_argument(
        "--normalise-tiles", type=int, nargs="+", default=[group_norm.NORMALISE_TILE], help="normalising tile sizes"
    )
    args = parser.parse_args()
    report = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "dtype": "float16", "shapes": {}}
    configs = [(t, w, n) for t in args.tiles for w in args.warps for n in args.normalise_tiles]
    totals = dict.fromkeys(configs, 0.0)
    for name, shape in SHAPES.items():
        generator = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(shape, device="cuda", generator=generator).half() * 2 + 0.5
        x_last = x.to(memory_format=torch.channels_last)
        weight = torch.rand(shape[1], device="cuda", generator=generator).half() + 0.5
        bias = torch.randn(shape[1], device="cuda", generator=generator).half()
        reference = F.group_norm(x.float(), 32, weight.float(), bias.float(), 1e-6)
        triton_out = group_norm_channels_last(x_last, 32, weight, bias, 1e-6)
        torch_out = F.group_norm(x_last, 32, weight, bias, 1e-6)
        row = {
            "shape": shape,
            "pytorch_nchw_ms": graphed_ms(lambda x=x, w=weight, b=bias: F.group_norm(x, 32, w, b, 1e-6)),
            "pytorch_channels_last_ms": graphed_ms(lambda x=x_last, w=weight, b=bias: F.group_norm(x, 32, w, b, 1e-6)),
            "triton_max_abs_error": (triton_out.float() - reference).abs().max().item(),
            "pytorch_max_abs_error": (torch_out.float() - reference).abs().max().item(),
            "pytorch_output_channels_last": torch_out.is_contiguous(memory_format=torch.channels_last),
            "triton_output_channels_last": triton_out.is_contiguous(memory_format=torch.channels_last),
        }
        conv_bias = torch.randn(shape[1], device="cuda", generator=generator).half()
        time_shift = torch.randn(shape[0], shape[1], device="cuda", generator=generator).half()
        shifts = (conv_bias, time_shift)
        fused_out = group_norm_channels_last(x_last, 32, weight, bias, 1e-6, shifts=shifts, silu=True)
        stock_sequence = lambda x=x_last, w=weight, b=bias, c=conv_bias, t=time_shift: F.silu(  # noqa: E731
            F.group_norm(x + c[:, None, None] + t[:, :, None, None], 32, w, b, 1e-6)
        )
        row["pytorch_resnet_norm2_ms"] = graphed_ms(stock_sequence)
        shifted = x.float() + conv_bias.float()[:, None, None] + time_shift.float()[:, :, None, None]
        fused_reference = F.silu(F.group_norm(shifted, 32, weight.float(), bias.float(), 1e-6))
        row["triton_resnet_norm2_max_abs_error"] = (fused_out.float() - fused_reference).abs().max().item()
        for tile, warps, normalise in configs:
            group_norm.TILE, group_norm.WARPS, group_norm.NORMALISE_TILE = tile, warps, normalise
            name_of = f"tile{tile}_warps{warps}_normalise{normalise}"
            run = lambda x=x_last, w=weight, b=bias: group_norm_channels_last(x, 32, w, b, 1e-6)  # noqa: E731
            row[f"triton_{name_of}_ms"] = milliseconds = graphed_ms(run)
            fused = lambda x=x_last, w=weight, b=bias, s=shifts: group_norm_channels_last(  # noqa: E731
                x, 32, w, b, 1e-6, shifts=s, silu=True
            )
            row[f"triton_resnet_norm2_{name_of}_ms"] = fused_ms = graphed_ms(fused)
            totals[(tile, warps, normalise)] += milliseconds + fused_ms
        best = min(configs, key=lambda config: row[f"triton_tile{config[0]}_warps{config[1]}_normalise{config[2]}_ms"])
        row["triton_channels_last_ms"] = row[f"triton_tile{best[0]}_warps{best[1]}_normalise{best[2]}_ms"]
        row["triton_resnet_norm2_ms"] = min(
            row[f"triton_resnet_norm2_tile{t}_warps{w}_normalise{n}_ms"] for t, w, n in configs
        )
        row["speedup_vs_pytorch_channels_last"] = row["pytorch_channels_last_ms"] / row["triton_channels_last_ms"]
        report["shapes"][name] = row
        timed_keys = ("pytorch_nchw_ms", "pytorch_channels_last_ms", "triton_channels_last_ms")
        us = {key: row[key] * 1000 for key in timed_keys}
        print(
            f"{name:22s} nchw {us['pytorch_nchw_ms']:7.1f} us  channels-last {us['pytorch_channels_last_ms']:7.1f} us"
            f"  triton {us['triton_channels_last_ms']:7.1f} us  x{row['speedup_vs_pytorch_channels_last']:.2f}"
            f"  err {row['triton_max_abs_error']:.4f} (torch {row['pytorch_max_abs_error']:.4f})"
            f"  | resnet norm2: stock {row['pytorch_resnet_norm2_ms'] * 1000:7.1f} us"
            f"  triton {row['triton_resnet_norm2_ms'] * 1000:7.1f} us",
            flush=True,
        )
    for (tile, warps, normalise), total in sorted(totals.items(), key=lambda item: item[1]):
        print(f"tile {tile:6d} warps {warps:2d} normalise {normalise:6d}: {total * 1000:8.1f} us over all shapes")
    report["totals_ms"] = {f"tile{t}_warps{w}_normalise{n}": total for (t, w, n), total in totals.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
