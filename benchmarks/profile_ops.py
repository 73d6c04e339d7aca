"""Which PyTorch operations one accelerated SD1.5 + ControlNet step spends its GPU time in, on a CUDA GPU.

The accelerated path replays CUDA graphs, in which a profiler sees kernels but not the operations that
launched them. This runs the same prepared networks (fused QKV, channels-last, Triton GroupNorm) eagerly,
once per step as the pipeline calls them (batch 2 for classifier-free guidance, 512²), and tables the GPU
time per operation and input shape: where the step goes, and so what to fuse next.

    python benchmarks/profile_ops.py --out benchmarks/results/ops.txt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
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
    args = parser.parse_args()
    import diffusers

    with tempfile.TemporaryDirectory() as tmp:
        config_dir = write_config_folder(read_configs("sd15"), Path(tmp))
        config = diffusers.UNet2DConditionModel.load_config(config_dir / "unet")
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = diffusers.UNet2DConditionModel.from_config(config).half().eval()
        controlnet = diffusers.ControlNetModel.from_unet(unet).half().eval()
    accelerator = CudaGraphAccelerator()
    for module in (unet, controlnet):
        accelerator._prepare(module)
    sample = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16)
    timestep = torch.tensor(500.0, device="cuda")
    text = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)
    control = torch.rand(2, 3, 512, 512, device="cuda", dtype=torch.float16)

    @torch.no_grad()
    def step() -> None:
        down, mid = controlnet(sample, timestep, text, controlnet_cond=control, return_dict=False)
        unet(sample, timestep, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as profiler:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    by_op = profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=40)
    by_shape = profiler.key_averages(group_by_input_shape=True).table(sort_by="self_cuda_time_total", row_limit=60)
    header = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {args.steps} steps (UNet + ControlNet)\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + by_op + "\n" + by_shape)
    print(header + by_op)


if __name__ == "__main__":
    main()
