"""ResNet blocks with fewer passes over memory: SiLU inside the GroupNorms, the time embedding inside the second.

Why: once GroupNorm stopped changing layouts (sd_core/group_norm.py), a step's largest remaining
memory-bound work sat in diffusers' ``ResnetBlock2D``: around its two convolutions it adds conv1's bias
(PyTorch adds a convolution's bias in a kernel of its own after cuDNN's channels-last convolution), adds
the time embedding, applies SiLU twice and divides by ``output_scale_factor`` (1.0). That is five passes
over a full activation doing almost no arithmetic (benchmarks/results/h100-2026-11-26-fused-ops.txt).

How: conv1 runs without its bias. Its bias plus the projected time embedding, an (images, channels)
shift, enters the second GroupNorm's statistics and affine terms instead of the tensor (a per-channel
shift moves a channel's mean, not its deviations). Both GroupNorms apply SiLU as they write, conv2's bias
joins a 1x1 shortcut's (one matrix product, sd_core/channels_last.py) or, without a shortcut, the residual
add (one kernel), and the division is skipped when the factor is 1. The blocks' time-embedding
projections run as one matrix product (sd_core/time_projection.py). Same arithmetic, in fp32 inside the
kernels, rounded to half precision fewer times than stock. Blocks of another shape (up- or down-sampling,
scale-shift time embedding, another activation) keep diffusers' forward; without the Triton kernels (CPU, no Triton, a
kernel that fails to build) the GroupNorms run PyTorch's arithmetic on the same restructured block.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from diffusers.models.resnet import ResnetBlock2D

from sd_core.channel_bias import add_with_channel_bias
from sd_core.channels_last import is_pointwise, pointwise_convolution
from sd_core.group_norm import group_norm
from sd_core.time_projection import TimeProjections
from sd_core.triton_support import routable_layers, shadow_forward, triton_available


def use_fused_resnet_blocks(module: torch.nn.Module) -> int:
    """Route every plain ``ResnetBlock2D`` inside ``module`` through ``fused_forward``, their time-embedding
    projections stacked into one (sd_core/time_projection.py); returns how many."""
    if not triton_available():
        return 0
    blocks = routable_layers(module, ResnetBlock2D, is_plain)
    projected = [block for block in blocks if block.time_emb_proj is not None and TimeProjections.projected_by(block)]
    projections = TimeProjections(projected) if len(projected) > 1 else None
    return shadow_forward(blocks, functools.partial(fused_forward, time_projections=projections))


def is_plain(block: ResnetBlock2D) -> bool:
    """The block shape the fused forward reproduces: GroupNorm -> SiLU -> conv, twice, with an additive time
    embedding or none, and no up- or down-sampling inside the block.

    A VAE decoder's blocks name their time-embedding norm "group" but have no time embedding: diffusers then
    runs them exactly like "default" ones without one (scale-shift blocks need an embedding, so stay out).
    """
    return (
        block.upsample is None
        and block.downsample is None
        and (
            block.time_embedding_norm == "default"
            or (block.time_emb_proj is None and block.time_embedding_norm != "scale_shift")
        )
        and isinstance(block.nonlinearity, torch.nn.SiLU)
        and all(isinstance(norm, torch.nn.GroupNorm) and norm.affine for norm in (block.norm1, block.norm2))
        and block.conv1.bias is not None
    )


def fused_forward(
    block: ResnetBlock2D,
    input_tensor: torch.Tensor,
    temb: torch.Tensor | None,
    *args: Any,
    time_projections: TimeProjections | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """``ResnetBlock2D.forward`` (same arguments, same result) with the shift and SiLUs folded into the norms,
    and the time embedding projected with the other blocks' (``time_projections``) where they were stacked."""
    # Without a projection diffusers adds a "default" block's time embedding as it comes: keep its forward then.
    if block.training or (block.time_emb_proj is None and temb is not None):
        return ResnetBlock2D.forward(block, input_tensor, temb, *args, **kwargs)
    norm1, norm2, conv1 = block.norm1, block.norm2, block.conv1
    hidden = group_norm(input_tensor, norm1.num_groups, norm1.weight, norm1.bias, norm1.eps, silu=True)
    hidden = conv1._conv_forward(hidden, conv1.weight, None)  # the instance's own padding (seamless tiling)
    time_shift = None
    if block.time_emb_proj is not None and temb is not None:
        if time_projections is not None and time_projections.covers(block):
            time_shift = time_projections.of(block, temb)
        else:
            time_shift = block.time_emb_proj(temb if block.skip_time_act else block.nonlinearity(temb))
    shifts = (conv1.bias, time_shift)
    hidden = group_norm(hidden, norm2.num_groups, norm2.weight, norm2.bias, norm2.eps, shifts=shifts, silu=True)
    hidden = block.dropout(hidden)
    conv2, shortcut_conv = block.conv2, block.conv_shortcut
    if shortcut_conv is None and conv2.bias is not None:
        # conv2's bias rides in the residual add instead of a pass of its own
        output = add_with_channel_bias(conv2._conv_forward(hidden, conv2.weight, None), conv2.bias, input_tensor)
    elif shortcut_conv is None:
        output = input_tensor + conv2(hidden)
    elif is_pointwise(shortcut_conv) and shortcut_conv.bias is not None and conv2.bias is not None:
        # conv2's bias rides in the shortcut's matrix product (channels_last.py) instead of a pass of its own
        shortcut = pointwise_convolution(shortcut_conv, input_tensor, bias=shortcut_conv.bias + conv2.bias)
        output = shortcut + conv2._conv_forward(hidden, conv2.weight, None)
    else:
        output = shortcut_conv(input_tensor) + conv2(hidden)
    return output if block.output_scale_factor == 1.0 else output / block.output_scale_factor
