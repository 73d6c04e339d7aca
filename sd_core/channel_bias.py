"""A convolution's bias added in one vectorised pass over channels-last activations, with the residual if any.

Why: PyTorch adds a cuDNN convolution's bias in a kernel of its own, and on a channels-last output that kernel
broadcasts without vector loads: 11 µs a call on an H100 in one SD1.5 + ControlNet request, 232 calls, most of
them in the VAE's large activations (benchmarks/results/h100-2026-11-26-session4-sd15.profile.txt). One
Triton pass reads each element once, in wide loads, and can add a ResNet block's residual in the same pass
(sd_core/resnet_block.py).

Convolutions routed here (3x3 and other spatial ones with a bias; 1x1 ones are matrix products already:
sd_core/channels_last.py) run cuDNN without the bias, then this, over the convolution's output (a second
activation beside it would raise the VAE decoder's peak by 64 MiB at 512²). Anything else (NCHW, fewer than
128 channels, no Triton, a kernel that fails to build: sd_core/triton_support.py) adds the bias in place the
way PyTorch does; off CUDA the convolution keeps its own bias.
"""

from __future__ import annotations

import torch

from sd_core.channels_last import is_pointwise
from sd_core.triton_support import KernelSwitch, route_forward

_SWITCH = KernelSwitch("bias add")
# A program's tile: pixel rows x channels. The channel block is fixed (one compiled variant for every width);
# narrower activations (a VAE's 3 output channels, a ControlNet embedding's 16) keep PyTorch's add.
_ROWS_BLOCK = 32
_CHANNELS_BLOCK = 128


def use_fused_convolution_biases(module: torch.nn.Module) -> int:
    """Route every spatial ``nn.Conv2d`` with a bias inside ``module`` through ``biased_convolution``."""
    return route_forward(module, torch.nn.Conv2d, biased_convolution, applies=_spatial_with_bias)


def _spatial_with_bias(conv: torch.nn.Conv2d) -> bool:
    return conv.bias is not None and not is_pointwise(conv) and conv.out_channels >= _CHANNELS_BLOCK


def biased_convolution(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``: cuDNN's convolution without the bias, then the bias in one pass where it applies."""
    if not _SWITCH.usable(x):
        return conv._conv_forward(x, conv.weight, conv.bias)
    return add_with_channel_bias(conv._conv_forward(x, conv.weight, None), conv.bias)


def add_with_channel_bias(
    update: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``update + bias`` (plus ``residual``) for (N, C, H, W) tensors and a (C,) bias, written over ``update``
    (a convolution's output of the caller's own, so no memory beside it is needed): one kernel where the
    tensors are channels-last, PyTorch's in-place adds elsewhere."""
    alike = residual is None or (
        residual.shape == update.shape
        and residual.dtype == update.dtype
        and residual.is_contiguous(memory_format=torch.channels_last)
    )
    if alike and _SWITCH.takes_image(update) and update.shape[1] >= _CHANNELS_BLOCK:
        return _SWITCH.run(lambda: _launch(update, bias, residual), lambda: _plain(update, bias, residual))
    return _plain(update, bias, residual)


def _plain(update: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    update.add_(bias[:, None, None])
    return update if residual is None else update.add_(residual)


def _launch(update: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    from sd_core import triton_kernels

    channels = update.shape[1]
    rows = update.numel() // channels
    triton_kernels.add_with_channel_bias[(-(-rows // _ROWS_BLOCK), -(-channels // _CHANNELS_BLOCK))](
        update, update if residual is None else residual, bias, update, rows, channels,
        HAS_RESIDUAL=residual is not None, CHANNELS_BLOCK=_CHANNELS_BLOCK, ROWS_BLOCK=_ROWS_BLOCK, num_warps=4,
    )  # fmt: skip
    return update
