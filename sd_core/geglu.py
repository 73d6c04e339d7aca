"""GEGLU, the gated GELU of every transformer block's feed-forward, in one Triton kernel.

Why: diffusers computes ``value, gate = proj(x).chunk(2, -1); value * gelu(gate)``: a GELU kernel and a
multiply kernel, both over strided halves of the projection (so without vector loads), with an
intermediate as large as the output between them. At SD1.5's 64² level that is 68 µs a block on an H100
(benchmarks/results/h100-2026-11-26-ops.txt); one pass that reads the projection once and writes the
product moves a third of the bytes.

The projection itself stays PyTorch's matrix product; only what follows it changes. Off the fast path
(CPU, gradients, no Triton, a kernel that fails to build) diffusers' own arithmetic runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU

from sd_core.triton_support import KernelSwitch, route_forward

_SWITCH = KernelSwitch("GEGLU")
# Columns one program handles: the feed-forward widths of SD1.5 and SDXL (1280, 2560, 5120) divide by it.
_BLOCK = 256


def use_fused_geglu(module: torch.nn.Module) -> int:
    """Route every diffusers ``GEGLU`` inside ``module`` through the fused kernel; returns how many."""
    return route_forward(module, GEGLU, _geglu_forward)


def _geglu_forward(layer: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    projected = layer.proj(hidden_states)
    if _SWITCH.usable(projected) and projected.is_contiguous():
        return _SWITCH.run(lambda: geglu(projected), lambda: plain_geglu(projected))
    return plain_geglu(projected)


def plain_geglu(projected: torch.Tensor) -> torch.Tensor:
    """diffusers' arithmetic: the reference the kernel is held to."""
    value, gate = projected.chunk(2, dim=-1)
    return value * F.gelu(gate)


def geglu(projected: torch.Tensor) -> torch.Tensor:
    """``value * gelu(gate)`` for a contiguous ``[..., 2 * inner]`` projection, in one kernel."""
    from sd_core import triton_kernels

    *leading, width = projected.shape
    inner = width // 2
    rows = projected.numel() // width
    out = projected.new_empty((*leading, inner))
    triton_kernels.geglu[(rows, -(-inner // _BLOCK))](projected, out, inner, BLOCK=_BLOCK, num_warps=2)
    return out
