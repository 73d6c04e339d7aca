"""Weights and activations channels-last: the weights converted in place, activations kept channels-last through
diffusers' transformer blocks, and 1x1 convolutions run as matmuls.

Why: ``Transformer2DModel`` ends with ``.permute(0, 3, 1, 2).contiguous()`` before (or after) its output
projection, which turns the channels-last activations into NCHW; the next convolution converts them back.
Two full copies per transformer block, 42 µs at SD1.5's 64² level on an H100
(benchmarks/results/h100-2026-11-26-ops.txt). The permuted view is already the channels-last layout the 1x1
convolution and the residual add want, so the copy buys nothing on the accelerated path.

How: the block's output step is shadowed on the instance by the same arithmetic without the copy. It is a
private diffusers method, so it is only replaced where its signature is the one this was written against
(diffusers 0.42); any other version keeps its own, which is slower, never wrong.

1x1 convolutions (transformer projections in SD1.x, ResNet shortcuts, ControlNet zero convolutions): on a
channels-last tensor such a convolution is a matrix product over pixel rows. PyTorch adds a convolution's
bias in a kernel of its own after cuDNN's; as ``F.linear`` the bias rides in the product's epilogue. About
70 passes over an activation a step fewer for SD1.5 + ControlNet.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from sd_core.triton_support import routable_layers, shadow_forward

_OUTPUT_STEP = "_get_output_for_continuous_inputs"
_EXPECTED_PARAMETERS = ["self", "hidden_states", "residual", "batch_size", "height", "width", "inner_dim"]


def convert_weights_to_channels_last(module: torch.nn.Module) -> int:
    """``module.to(memory_format=torch.channels_last)`` for its 4-D weights and buffers, largest first; returns
    how many were copied.

    Each conversion copies a weight and frees the original. In module order the freed blocks stayed behind as
    holes between weights, reserved GPU memory nothing used again; largest first, each later (smaller) copy
    fits in the space an earlier one freed.
    """
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers()) if t.dim() == 4}
    converted = 0
    for tensor in sorted(tensors.values(), key=lambda t: t.numel(), reverse=True):
        if not tensor.is_contiguous(memory_format=torch.channels_last):
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
            converted += 1
    return converted


def keep_transformer_outputs_channels_last(module: torch.nn.Module) -> int:
    """Shadow the output step of every ``Transformer2DModel`` inside ``module``; returns how many."""
    replaced = 0
    for block in module.modules():
        step = getattr(type(block), _OUTPUT_STEP, None)
        if step is None or _OUTPUT_STEP in block.__dict__ or not _matches(step):
            continue
        setattr(block, _OUTPUT_STEP, functools.partial(_output_step, block))
        replaced += 1
    return replaced


@functools.cache
def _matches(step: object) -> bool:
    return list(inspect.signature(step).parameters) == _EXPECTED_PARAMETERS  # type: ignore[arg-type]


def _output_step(
    block: torch.nn.Module,
    hidden_states: torch.Tensor,
    residual: torch.Tensor,
    batch_size: int,
    height: int,
    width: int,
    inner_dim: int,
) -> torch.Tensor:
    if block.use_linear_projection:
        hidden_states = block.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
    else:
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
        hidden_states = block.proj_out(hidden_states)
    return hidden_states + residual


def use_matmuls_for_pointwise_convolutions(module: torch.nn.Module) -> int:
    """Route every 1x1 convolution inside ``module`` through ``pointwise_convolution`` (no Triton needed);
    returns how many."""
    return shadow_forward(routable_layers(module, torch.nn.Conv2d, is_pointwise), _pointwise_forward)


def is_pointwise(conv: torch.nn.Conv2d) -> bool:
    """A 1x1 convolution that mixes channels only: one pixel in, one pixel out, one group."""
    return (
        tuple(conv.kernel_size) == (1, 1)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.groups == 1
    )


def _pointwise_forward(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return pointwise_convolution(conv, x, conv.bias)


def pointwise_convolution(conv: torch.nn.Conv2d, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A pointwise ``conv`` of ``x`` with ``bias`` in place of the layer's own.

    Channels-last input: one matrix product over pixel rows, bias in its epilogue, result channels-last.
    Any other layout: the convolution itself.
    """
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        return conv._conv_forward(x, conv.weight, bias)
    return F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), bias).permute(0, 3, 1, 2)
