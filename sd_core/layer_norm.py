"""LayerNorm in Triton, optionally with the residual add before it: one pass where PyTorch makes two.

Why: a transformer block of the UNet normalises its activations three times, and twice right after adding
an attention's output to them. PyTorch's LayerNorm kernel takes about 14 µs for SD1.5's (2, 4096, 320) rows on
an H100, four times what reading and writing them costs, and the add before it is a pass of its own
(benchmarks/results/h100-2026-11-26-session3-ops.txt). One kernel reads the attention's output, its output
projection's bias and the residual, writes the new residual, and writes it normalised.

Statistics are fp32 over each whole row (two passes over registers, no E[x²] - E[x]² cancellation), like
PyTorch's. Off the fast path (CPU, gradients, no Triton, a kernel that fails to build:
sd_core/triton_support.py) PyTorch's own arithmetic runs, the reference the kernel is held to.
"""

from __future__ import annotations

import torch

from sd_core.triton_support import KernelSwitch, next_power_of_two, rows_per_tile

_SWITCH = KernelSwitch("LayerNorm")
# Elements (rows x padded width) one program normalises, and its warps.
TILE = 4096
WARPS = 4
# Widest row kept in registers; wider ones (no UNet has them) go to PyTorch.
_MAX_WIDTH = 8192


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """``norm(x)``, through the kernel where it applies."""
    if _runs_in_triton(norm, x):
        return _SWITCH.run(lambda: _launch(norm, x)[1], lambda: norm(x))
    return norm(x)


def add_layer_norm(
    update: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor,
    norm: torch.nn.LayerNorm,
    carried_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(update + bias + residual, norm(update + bias + residual))``: a block's new residual and its
    normalised input to the next layer. ``update`` is a linear layer's output without its ``bias``.

    With ``carried_bias`` the residual is returned with that bias added too (the sum is normalised without
    it): the next layer's bias, so that layer can add its product onto the residual in place
    (sd_core/transformer_block.py). The result is always a new tensor.
    """

    def plain() -> tuple[torch.Tensor, torch.Tensor]:
        summed = (update + bias) + residual
        return summed if carried_bias is None else summed + carried_bias, norm(summed)

    biases_fit = all(b is None or b.shape == update.shape[-1:] for b in (bias, carried_bias))
    if _runs_in_triton(norm, update, residual) and biases_fit:
        return _SWITCH.run(lambda: _launch(norm, update, bias, residual, carried_bias), plain)
    return plain()


def _runs_in_triton(norm: torch.nn.LayerNorm, x: torch.Tensor, *others: torch.Tensor) -> bool:
    return (
        norm.weight is not None
        and norm.bias is not None
        and tuple(norm.normalized_shape) == x.shape[-1:]
        and x.shape[-1] <= _MAX_WIDTH
        and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and x.is_contiguous()
        and all(other.shape == x.shape and other.dtype == x.dtype and other.is_contiguous() for other in others)
        and not (torch.is_grad_enabled() and norm.weight.requires_grad)
        and _SWITCH.usable(x)
    )


def _launch(
    norm: torch.nn.LayerNorm,
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    carried_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    from sd_core import triton_kernels

    width = x.shape[-1]
    rows = x.numel() // width
    width_block = next_power_of_two(width)
    rows_block = rows_per_tile(TILE, width_block)
    adds = residual is not None
    summed = torch.empty_like(x) if adds else x
    out = torch.empty_like(x)
    triton_kernels.layer_norm[(-(-rows // rows_block),)](
        x, bias if adds else x, residual if adds else x, x if carried_bias is None else carried_bias, norm.weight,
        norm.bias, summed, out, rows, width, norm.eps, ADD=adds, CARRY_BIAS=carried_bias is not None,
        WIDTH_BLOCK=width_block, ROWS_BLOCK=rows_block, num_warps=WARPS,
    )  # fmt: skip
    return summed, out
