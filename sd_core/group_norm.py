"""GroupNorm for channels-last activations, in Triton: normalise in place of layout, not around it.

Why: convolutions run fastest channels-last (NHWC) on NVIDIA GPUs, but PyTorch's CUDA group_norm has only
an NCHW kernel. Given a channels-last tensor it copies it to NCHW, normalises, and the next convolution
converts the result back. In the H100 profile of one SD1.5 + ControlNet request those copies and the
NCHW statistics kernel took about a third of the GPU time (benchmarks/results/h100-2026-11-26.profile.txt);
the UNet, ControlNet and VAE hold about a hundred GroupNorms a step.

How: three kernels over the tensor viewed as (images, pixels, channels), reading pixel rows a block of 128
contiguous channels at a time (wide, coalesced loads; one compiled kernel for every channel count):
1. statistics: an image's pixels are split into up to ``MAX_CHUNKS`` chunks, one program per chunk and channel
   block (enough programs to fill the GPU even for a VAE's single image); a program keeps a mean and a sum of
   squared deviations per channel, merging its tiles with Chan's formula (no E[x²] - E[x]² cancellation,
   whatever the mean);
2. merge: one program per group and image merges its channels' chunks the same way into the group's mean
   and 1/std, and folds them with the affine weights into a scale and shift per channel;
3. normalise: one program per tile computes x * scale + shift in fp32, like PyTorch's kernel, and writes
   channels-last.
Small groups (a UNet's deepest level) take one kernel instead, one program a group, that computes the
statistics and then normalises: there the launches and the merge cost more than spreading the work gains.
No atomics: the result is the same bit for bit on every run. Anything else (NCHW input, CPU, gradients,
no Triton, kernels that fail to build: sd_core/triton_support.py) goes to PyTorch's own group_norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sd_core.triton_support import KernelSwitch, next_power_of_two, route_forward, rows_per_tile

# The channels a statistics or normalising program spans: fixed, so any channel count runs the same compiled
# kernels (each variant costs about 0.4 s of compiling before the first image), with blocks side by side.
CHANNELS_BLOCK = 128
# Elements (pixels x channels) of one tile a statistics program holds in registers at a time, and the
# warps that hold it: sizes measured on an H200 (benchmarks/group_norm_benchmark.py).
TILE = 16384
WARPS = 4
# The same for the normalising kernel, which with SiLU needs more registers per element: 4096 was the fastest of
# 1024-16384 on an H100 (benchmarks/results/h100-2026-11-26-resnet-norms.json).
NORMALISE_TILE = 4096
NORMALISE_WARPS = 4
# Statistics chunks per image, at most (a power of two): enough programs to fill the GPU even for one image (a
# VAE's), each streaming a few tiles, and few enough for a group's merge to hold them all (at most MERGE_ELEMENTS
# chunk statistics a group). 256 was the fastest of 64-1024 or within 3% of it for every UNet and VAE shape on an H100
# (64 took 1.6x as long for a VAE's 128 channels at 512²: benchmarks/results/h100-2026-11-26-session5-steps.json).
MAX_CHUNKS = 256
MERGE_ELEMENTS = 8192
# A group of at most this many elements (pixels x channels a group) is normalised whole by one program, in one
# kernel: at a UNet's deepest level (8² latents) the three kernels' launches cost more than their parallelism
# gains (H100: 9.5 -> 5.9 µs for SD1.5's 1280 channels), above it spreading the work wins (14 against 47 µs at
# 64²). Threshold, tile and warps from benchmarks/results/h100-2026-11-26-session4-group-norm-paths.json.
SMALL_GROUP = 8192
SMALL_GROUP_TILE = 4096
SMALL_GROUP_WARPS = 8


_SWITCH = KernelSwitch("GroupNorm")
# Shifts added to the input before normalising: one per channel, one per image and channel (either None).
Shifts = tuple[torch.Tensor | None, torch.Tensor | None]


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    shifts: Shifts = (None, None),
    silu: bool = False,
) -> torch.Tensor:
    """``F.group_norm`` with the same arguments, through the Triton kernels where they apply.

    Optionally of ``x`` plus ``shifts`` (a (channels,) and an (images, channels) shift, either None; never
    added to ``x`` itself), and followed by SiLU: what a ResNet block does around its GroupNorms
    (sd_core/resnet_block.py). Off the fast path, PyTorch's arithmetic: the reference the kernels are held to.
    """

    def plain() -> torch.Tensor:
        channel_shift, image_shift = shifts
        shifted = x if channel_shift is None else x + channel_shift[:, None, None]
        shifted = shifted if image_shift is None else shifted + image_shift[:, :, None, None]
        normalised = F.group_norm(shifted, num_groups, weight, bias, eps)
        return F.silu(normalised) if silu else normalised

    # (images, channels, pixels) over pixel rows of contiguous channels, as an attention's GroupNorm gets them
    # (diffusers transposes its (images, pixels, channels) input), is the same memory as channels-last pixels
    image = x.unsqueeze(-1) if x.dim() == 3 and x.stride(1) == 1 else x
    if _runs_in_triton(image, weight, bias):
        return _SWITCH.run(
            lambda: group_norm_channels_last(image, num_groups, weight, bias, eps, shifts, silu).view_as(x),  # type: ignore[arg-type]
            plain,
        )
    return plain()


def use_triton_group_norm(module: torch.nn.Module) -> int:
    """Route every ``nn.GroupNorm`` inside ``module`` through ``group_norm``; returns how many were routed."""
    return route_forward(module, torch.nn.GroupNorm, _group_norm_forward)


def _group_norm_forward(norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)


def _runs_in_triton(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> bool:
    return (
        weight is not None
        and bias is not None
        and not (torch.is_grad_enabled() and weight.requires_grad)
        and _SWITCH.takes_image(x)
    )


def group_norm_channels_last(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    shifts: Shifts = (None, None),
    silu: bool = False,
) -> torch.Tensor:
    """Group-normalise a channels-last (N, C, H, W) tensor (plus ``shifts``, then SiLU if asked); the result
    is channels-last too."""
    channels, height, width = x.shape[1:]
    if channels % num_groups:
        raise ValueError(f"{channels} channels do not split into {num_groups} groups")
    channel_shift, image_shift = shifts
    if image_shift is not None and image_shift.stride(1) != 1:
        image_shift = image_shift.contiguous()  # rows may lie apart (time_projection.py), not columns
    out = torch.empty_like(x)  # keeps the channels-last layout
    group_size = channels // num_groups
    if height * width * group_size > SMALL_GROUP:
        _normalise_in_three_kernels(x, out, num_groups, weight, bias, eps, (channel_shift, image_shift), silu)
        return out
    from sd_core import triton_kernels as kernels

    member_block = next_power_of_two(group_size)
    kernels.group_norm_per_group[(num_groups, x.shape[0])](
        x, out, weight, bias, channel_shift, image_shift, _row_stride(image_shift), height * width, channels,
        group_size, eps, MEMBER_BLOCK=member_block, ROWS_BLOCK=rows_per_tile(SMALL_GROUP_TILE, member_block),
        HAS_CHANNEL_SHIFT=channel_shift is not None, HAS_IMAGE_SHIFT=image_shift is not None, SILU=silu,
        num_warps=SMALL_GROUP_WARPS,
    )  # fmt: skip
    return out


def _normalise_in_three_kernels(
    x: torch.Tensor,
    out: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    shifts: Shifts,
    silu: bool,
) -> None:
    from sd_core import triton_kernels as kernels

    images, channels, height, width = x.shape
    pixels = height * width
    group_size = channels // num_groups
    channel_blocks = -(-channels // CHANNELS_BLOCK)
    rows_block = rows_per_tile(TILE, CHANNELS_BLOCK)
    chunk_rows, chunks = statistics_chunks(pixels, rows_block, group_size)
    statistics = torch.empty((2, images, chunks, channels), device=x.device, dtype=torch.float32)
    kernels.chunk_statistics[(chunks, channel_blocks, images)](
        x, statistics[0], statistics[1], pixels, channels, chunk_rows, CHANNELS_BLOCK=CHANNELS_BLOCK,
        ROWS_BLOCK=rows_block, num_warps=WARPS,
    )  # fmt: skip
    scale_and_shift = torch.empty((2, images, channels), device=x.device, dtype=torch.float32)
    channel_shift, image_shift = shifts
    kernels.merge[(num_groups, images)](
        statistics[0], statistics[1], weight, bias, channel_shift, image_shift, _row_stride(image_shift),
        scale_and_shift[0], scale_and_shift[1], pixels, channels, group_size, chunk_rows, chunks, eps,
        CHUNKS_BLOCK=_merge_chunks_block(chunks, group_size), MEMBER_BLOCK=next_power_of_two(group_size),
        HAS_CHANNEL_SHIFT=channel_shift is not None, HAS_IMAGE_SHIFT=image_shift is not None,
    )  # fmt: skip
    normalise_rows = rows_per_tile(NORMALISE_TILE, CHANNELS_BLOCK)
    kernels.normalise[(-(-pixels // normalise_rows), channel_blocks, images)](
        x, out, scale_and_shift[0], scale_and_shift[1], pixels, channels, CHANNELS_BLOCK=CHANNELS_BLOCK,
        ROWS_BLOCK=normalise_rows, SILU=silu, num_warps=NORMALISE_WARPS,
    )  # fmt: skip


def statistics_chunks(pixels: int, rows_block: int, group_size: int) -> tuple[int, int]:
    """How an image's pixels split among statistics programs: rows a chunk (whole tiles), and chunks."""
    tiles = -(-pixels // rows_block)
    chunk_rows = rows_block * -(-tiles // _most_chunks(group_size))
    return chunk_rows, -(-pixels // chunk_rows)


def _most_chunks(group_size: int) -> int:
    """The most chunks a group's merge holds."""
    return max(1, min(next_power_of_two(MAX_CHUNKS), MERGE_ELEMENTS // next_power_of_two(group_size)))


def _merge_chunks_block(chunks: int, group_size: int) -> int:
    """The block a merge spans ``chunks`` with: the next power of four, so that few sizes compile kernels of
    their own (each about 0.4 s before the first image) while few chunks are not merged in a block of many
    (a 128-chunk block for 2 chunks took 3 µs more a call on an H100)."""
    block = 1
    while block < chunks:
        block *= 4
    return min(block, _most_chunks(group_size))


def _row_stride(image_shift: torch.Tensor | None) -> int:
    return 0 if image_shift is None else image_shift.stride(0)
