"""Noise drawn on the CPU reaches the GPU without making the host wait for the GPU.

Why: sd_core seeds a CPU generator, so a seed gives the same image on any GPU (and on the CPU). diffusers
then draws each noise tensor on the CPU and copies it to the GPU from pageable memory, and such a copy waits
until everything queued on the GPU has run. In an img2img request that happens right after the VAE encode
is queued: the host sat idle for the encode (2.5 ms at 512² on an H100), and then the GPU sat idle while the
host prepared the first step (benchmarks/results/h100-2026-11-26-session5-*). Ancestral and SDE samplers
draw noise every step, so there it stalled every step.

How: ``randn_tensor`` below is diffusers' own function with the same numbers, but it copies CPU-drawn noise
through pinned memory without blocking (PyTorch keeps a pinned block until its copy has run). It replaces
diffusers' in the modules of the pipeline, scheduler and VAE that call it, for as long as the process
runs: those modules look it up by name when they draw noise. Anything else (no generator, GPU generators,
a CPU target) goes straight to diffusers' function.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils import torch_utils

_DIFFUSERS_RANDN = torch_utils.randn_tensor


def randn_tensor(
    shape: Any,
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    layout: torch.layout | None = None,
) -> torch.Tensor:
    """``diffusers.utils.torch_utils.randn_tensor``, the same values; CPU-drawn noise for a GPU is uploaded
    without blocking the host."""
    target = torch.device(device) if isinstance(device, str) else device
    if target is None or target.type != "cuda" or layout not in (None, torch.strided) or not _on_cpu(generator):
        return _DIFFUSERS_RANDN(shape, generator=generator, device=device, dtype=dtype, layout=layout)
    noise = _DIFFUSERS_RANDN(shape, generator=generator, device=torch.device("cpu"), dtype=dtype, layout=layout)
    return noise.pin_memory().to(target, non_blocking=True)


def draw_noise_without_waiting(*users: Any) -> int:
    """Give every diffusers module that defines the classes of ``users`` (a pipeline, a scheduler), and the
    VAE's, this ``randn_tensor``; returns how many modules changed (none the second time)."""
    classes = [cls for user in users for cls in type(user).__mro__] + [DiagonalGaussianDistribution]
    changed = 0
    for cls in classes:
        module = sys.modules.get(cls.__module__)
        if getattr(module, "randn_tensor", None) is _DIFFUSERS_RANDN:
            module.randn_tensor = randn_tensor  # type: ignore[union-attr]
            changed += 1
    return changed


def _on_cpu(generator: torch.Generator | list[torch.Generator] | None) -> bool:
    if generator is None:
        return False
    generators = generator if isinstance(generator, list) else [generator]
    return all(each.device.type == "cpu" for each in generators)
