"""Nearest-neighbour 2x upsampling of channels-last activations, in Triton: one pass at memory speed.

Why: every upsampler of a UNet and of a VAE decoder doubles its input's size with ``F.interpolate(...,
mode="nearest")`` before a convolution. PyTorch's channels-last kernel computes each output element's source
on its own and took 229 µs a call at the SD VAE decoder's largest (256 channels to 512²) on an H100, four times
what moving those bytes costs (benchmarks/results/h100-2026-11-26-session5-*). One program here reads a tile of
input pixels once, in wide loads along the channels, and writes each to its four output pixels.

Only diffusers' plain ``Upsample2D`` is routed (interpolation by exactly 2, no norm, no transposed convolution);
anything else, and any input off the fast path (NCHW, CPU, no Triton, a kernel that fails to build:
sd_core/triton_support.py), runs diffusers' own forward.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.upsampling import Upsample2D

from sd_core.triton_support import KernelSwitch, route_forward

_SWITCH = KernelSwitch("upsample")
# A program's tile: input pixels x channels (fixed, so every width runs one compiled variant).
_ROWS_BLOCK = 32
_CHANNELS_BLOCK = 128


def use_triton_upsampling(module: torch.nn.Module) -> int:
    """Route every plain ``Upsample2D`` inside ``module`` through ``upsample_forward``; returns how many."""
    return route_forward(module, Upsample2D, upsample_forward, applies=is_plain)


def is_plain(layer: Upsample2D) -> bool:
    """Nearest-neighbour interpolation by 2, then the layer's convolution if it has one."""
    return layer.interpolate and layer.norm is None and not layer.use_conv_transpose


def upsample_forward(
    layer: Upsample2D, hidden_states: torch.Tensor, output_size: Any = None, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """``Upsample2D.forward``, with the interpolation in one kernel where the input allows."""
    doubled = (2 * hidden_states.shape[-2], 2 * hidden_states.shape[-1]) if hidden_states.dim() == 4 else None
    wanted = output_size is None or (isinstance(output_size, (tuple, list)) and tuple(output_size) == doubled)
    if not (wanted and not args and not kwargs and _SWITCH.takes_image(hidden_states)):
        return Upsample2D.forward(layer, hidden_states, output_size, *args, **kwargs)
    upsampled = _SWITCH.run(lambda: upsample_nearest_2x(hidden_states), lambda: _plain(hidden_states))
    if not layer.use_conv:
        return upsampled
    convolution = layer.conv if layer.name == "conv" else layer.Conv2d_0
    return convolution(upsampled)


def upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """A channels-last (N, C, H, W) tensor upsampled to (N, C, 2H, 2W), channels-last, in one kernel."""
    from sd_core import triton_kernels

    images, channels, height, width = x.shape
    shape = (images, channels, 2 * height, 2 * width)
    out = torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    rows = images * height * width
    triton_kernels.upsample_nearest_2x[(-(-rows // _ROWS_BLOCK), -(-channels // _CHANNELS_BLOCK))](
        x, out, rows, width, channels, CHANNELS_BLOCK=_CHANNELS_BLOCK, ROWS_BLOCK=_ROWS_BLOCK, num_warps=4
    )
    return out


def _plain(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
