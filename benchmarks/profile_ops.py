"""Which PyTorch operations one accelerated SD1.5 + ControlNet step spends its GPU time in, on a CUDA GPU.

The accelerated path replays CUDA graphs, in which a profiler sees kernels but not the operations that
launched them. This runs the same prepared networks (fused QKV, channels-last, Triton kernels) eagerly,
once per step as the pipeline calls them (batch 2 for classifier-free guidance; 512² for SD1.5, 1024² for
SDXL), and tables the GPU time per operation and input shape: where the step goes, and so what to fuse next.

    python benchmarks/profile_ops.py --out benchmarks/results/ops.txt [--family sdxl]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sd_core.acceleration import CudaGraphAccelerator
from sd_core.models.bundled import read_configs, write_config_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--family", choices=["sd1", "sdxl"], default="sd1")
    args = parser.parse_args()
    unet, controlnet = build_denoisers(args.family)
    accelerator = CudaGraphAccelerator()
    for module in (unet, controlnet):
        accelerator._prepare(module)
    step = denoising_step(unet, controlnet, args.family)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as profiler:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    by_op = profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=40)
    by_shape = profiler.key_averages(group_by_input_shape=True).table(sort_by="self_cuda_time_total", row_limit=60)
    header = (
        f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {args.family}, {args.steps} steps "
        "(UNet + ControlNet)\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + by_op + "\n" + by_shape)
    print(header + by_op)


def build_denoisers(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A real-size UNet of ``family`` with random fp16 weights on the GPU, and a ControlNet made from it."""
    import diffusers

    with tempfile.TemporaryDirectory() as tmp:
        config_dir = write_config_folder(read_configs("sd15" if family == "sd1" else "sdxl_base"), Path(tmp))
        config = diffusers.UNet2DConditionModel.load_config(config_dir / "unet")
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = diffusers.UNet2DConditionModel.from_config(config).half().eval()
        controlnet = diffusers.ControlNetModel.from_unet(unet).half().eval()
    return unet, controlnet


def denoising_step(unet: torch.nn.Module, controlnet: torch.nn.Module, family: str) -> Callable[[], torch.Tensor]:
    """One step as the ControlNet pipelines call it, on fixed random inputs: the ControlNet, then the UNet."""
    size, text_width = (512, 768) if family == "sd1" else (1024, 2048)
    half = {"device": "cuda", "dtype": torch.float16}
    sample = torch.randn(2, 4, size // 8, size // 8, **half)
    timestep = torch.tensor(500.0, device="cuda")
    text = torch.randn(2, 77, text_width, **half)
    control = torch.rand(2, 3, size, size, **half)
    added = None
    if family == "sdxl":
        added = {
            "text_embeds": torch.randn(2, 1280, **half),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, **half),
        }

    @torch.no_grad()
    def step() -> torch.Tensor:
        down, mid = controlnet(
            sample, timestep, text, controlnet_cond=control, added_cond_kwargs=added, return_dict=False
        )
        return unet(
            sample, timestep, text, added_cond_kwargs=added, down_block_additional_residuals=down,
            mid_block_additional_residual=mid, return_dict=False,
        )[0]  # fmt: skip

    return step


if __name__ == "__main__":
    main()
