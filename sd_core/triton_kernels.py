"""sd_core's Triton kernels (imported only where they run: Triton is not everywhere).

GroupNorm (launched and explained by sd_core/group_norm.py): the kernels view the activations as (images,
pixels, channels) and read whole pixel rows, contiguous channels-last, so loads are wide and coalesced.
GEGLU (sd_core/geglu.py): one pass over a transformer feed-forward's projection.
LayerNorm with the residual add before it (sd_core/layer_norm.py), and a convolution's bias with the residual
add after it (sd_core/channel_bias.py).

Triton compiles a kernel again for each new combination of its integer arguments' divisibility by 16 (and
equality to 1), and for each value of its compile-time constants: about 0.4 s each on an H100's host. Sizes
that only bound loops and masks are exempt (``do_not_specialize``), so a new image size does not compile its
own variants of them; channel counts stay specialised, since as row strides their divisibility is what lets
Triton load 16 bytes at a time. With an empty cache SD1.5 + ControlNet's first image took 14.2 s on an H100, 2.5 s with
the kernels cached on disk (benchmarks/README.md).
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["pixels", "chunk_rows"])
def chunk_statistics(
    x_ptr, mean_ptr, deviation_ptr, pixels, channels, chunk_rows, CHANNELS_BLOCK: tl.constexpr, ROWS_BLOCK: tl.constexpr
):
    """Per channel of one block of channels, over one chunk of an image's pixels: the mean and the sum of squared
    deviations.

    Tiles are merged with Chan's formula, so nothing cancels however far the mean lies from zero.
    """
    chunk = tl.program_id(0)
    channel = tl.program_id(1) * CHANNELS_BLOCK + tl.arange(0, CHANNELS_BLOCK)
    image = tl.program_id(2)
    first = chunk * chunk_rows
    end = tl.minimum(first + chunk_rows, pixels)
    image_at = image.to(tl.int64) * pixels * channels
    mean = tl.zeros([CHANNELS_BLOCK], dtype=tl.float32)
    deviation = tl.zeros([CHANNELS_BLOCK], dtype=tl.float32)
    count = tl.zeros([CHANNELS_BLOCK], dtype=tl.float32)
    for start in range(first, end, ROWS_BLOCK):
        row = start + tl.arange(0, ROWS_BLOCK)[:, None]
        mask = (row < end) & (channel[None, :] < channels)
        where = image_at + row.to(tl.int64) * channels + channel[None, :]
        tile = tl.load(x_ptr + where, mask=mask, other=0.0).to(tl.float32)
        tile_count = tl.minimum(end - start, ROWS_BLOCK).to(tl.float32)
        tile_mean = tl.sum(tile, axis=0) / tile_count
        centred = tl.where(mask, tile - tile_mean[None, :], 0.0)
        merged = count + tile_count
        delta = tile_mean - mean
        mean += delta * (tile_count / merged)
        deviation += tl.sum(centred * centred, axis=0) + delta * delta * (count * tile_count / merged)
        count = merged
    at = (image * tl.num_programs(0) + chunk) * channels + channel
    tl.store(mean_ptr + at, mean, mask=channel < channels)
    tl.store(deviation_ptr + at, deviation, mask=channel < channels)


@triton.jit
def _input_shift(
    channel_shift_ptr, image_shift_ptr, image_shift_stride, image, channel, in_group, MEMBER_BLOCK: tl.constexpr,
    HAS_CHANNEL_SHIFT: tl.constexpr, HAS_IMAGE_SHIFT: tl.constexpr,
):  # fmt: skip
    """The shift added to one image's ``channel``s before normalising: a per-channel one, a per-image-and-channel
    one (rows ``image_shift_stride`` apart), both, or none."""
    input_shift = tl.zeros([MEMBER_BLOCK], dtype=tl.float32)
    if HAS_CHANNEL_SHIFT:
        input_shift += tl.load(channel_shift_ptr + channel, mask=in_group, other=0.0).to(tl.float32)
    if HAS_IMAGE_SHIFT:
        at_image = image_shift_ptr + image * image_shift_stride
        input_shift += tl.load(at_image + channel, mask=in_group, other=0.0).to(tl.float32)
    return input_shift


@triton.jit(do_not_specialize=["image_shift_stride", "pixels", "group_size", "chunk_rows", "chunks"])
def merge(
    mean_ptr, deviation_ptr, weight_ptr, bias_ptr, channel_shift_ptr, image_shift_ptr, image_shift_stride, scale_ptr,
    shift_ptr, pixels, channels, group_size, chunk_rows, chunks, eps, CHUNKS_BLOCK: tl.constexpr,
    MEMBER_BLOCK: tl.constexpr, HAS_CHANNEL_SHIFT: tl.constexpr, HAS_IMAGE_SHIFT: tl.constexpr,
):  # fmt: skip
    """One group of one image: merge its channels' chunk statistics, fold in the affine weights as a
    per-channel scale and shift (so normalising is one multiply-add per element).

    With input shifts (one per channel, one per image and channel) the group normalised is ``x`` plus them:
    a shift moves each channel's mean, not its deviations, and joins the affine shift, so it is never added
    to ``x`` itself.
    """
    group = tl.program_id(0)
    image = tl.program_id(1)
    chunk = tl.arange(0, CHUNKS_BLOCK)[:, None]
    member = tl.arange(0, MEMBER_BLOCK)
    channel = group * group_size + member
    in_group = member < group_size
    present = (chunk < chunks) & in_group[None, :]
    at = (image * chunks + chunk) * channels + channel[None, :]
    input_shift = _input_shift(
        channel_shift_ptr, image_shift_ptr, image_shift_stride, image, channel, in_group, MEMBER_BLOCK,
        HAS_CHANNEL_SHIFT, HAS_IMAGE_SHIFT,
    )  # fmt: skip
    chunk_mean = tl.load(mean_ptr + at, mask=present, other=0.0) + input_shift[None, :]
    chunk_deviation = tl.load(deviation_ptr + at, mask=present, other=0.0)
    chunk_count = tl.where(present, tl.minimum(pixels - chunk * chunk_rows, chunk_rows).to(tl.float32), 0.0)
    total = (pixels * group_size).to(tl.float32)
    mean = tl.sum(tl.sum(chunk_mean * chunk_count, axis=1), axis=0) / total
    spread = chunk_mean - mean
    variance = (tl.sum(tl.sum(chunk_deviation + chunk_count * spread * spread, axis=1), axis=0)) / total
    inverse_std = 1.0 / tl.sqrt(variance + eps)
    scale = tl.load(weight_ptr + channel, mask=in_group, other=0.0).to(tl.float32) * inverse_std
    shift = tl.load(bias_ptr + channel, mask=in_group, other=0.0).to(tl.float32) + (input_shift - mean) * scale
    tl.store(scale_ptr + image * channels + channel, scale, mask=in_group)
    tl.store(shift_ptr + image * channels + channel, shift, mask=in_group)


@triton.jit(do_not_specialize=["pixels"])
def normalise(
    x_ptr, out_ptr, scale_ptr, shift_ptr, pixels, channels, CHANNELS_BLOCK: tl.constexpr, ROWS_BLOCK: tl.constexpr,
    SILU: tl.constexpr,
):  # fmt: skip
    """One tile (pixel rows x a block of channels): x * scale + shift per channel (then SiLU if asked), in fp32,
    stored in the input's precision."""
    row = tl.program_id(0) * ROWS_BLOCK + tl.arange(0, ROWS_BLOCK)[:, None]
    channel = tl.program_id(1) * CHANNELS_BLOCK + tl.arange(0, CHANNELS_BLOCK)
    image = tl.program_id(2)
    in_image = channel < channels
    scale = tl.load(scale_ptr + image * channels + channel, mask=in_image, other=0.0)[None, :]
    shift = tl.load(shift_ptr + image * channels + channel, mask=in_image, other=0.0)[None, :]
    mask = (row < pixels) & in_image[None, :]
    where = image.to(tl.int64) * pixels * channels + row.to(tl.int64) * channels + channel[None, :]
    tile = tl.load(x_ptr + where, mask=mask, other=0.0).to(tl.float32)
    normalised = tile * scale + shift
    if SILU:
        normalised = normalised * tl.sigmoid(normalised)
    tl.store(out_ptr + where, normalised.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def geglu(x_ptr, out_ptr, inner, BLOCK: tl.constexpr):
    """One block of one row: ``a * gelu(gate)`` where the row holds ``[a | gate]``, each ``inner`` wide.

    Exact (erf) GELU in fp32, like ``F.gelu``'s default, stored in the input's precision.
    """
    row = tl.program_id(0).to(tl.int64)
    column = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = column < inner
    value = tl.load(x_ptr + row * 2 * inner + column, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(x_ptr + row * 2 * inner + inner + column, mask=mask, other=0.0).to(tl.float32)
    gelu = 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))
    tl.store(out_ptr + row * inner + column, (value * gelu).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["rows"])
def layer_norm(
    x_ptr, bias_ptr, residual_ptr, carried_bias_ptr, weight_ptr, norm_bias_ptr, sum_ptr, out_ptr, rows, width, eps,
    ADD: tl.constexpr, CARRY_BIAS: tl.constexpr, WIDTH_BLOCK: tl.constexpr, ROWS_BLOCK: tl.constexpr,
):  # fmt: skip
    """One tile of rows: layer-normalise each row over its ``width`` columns, in fp32.

    With ADD the rows normalised are ``x`` plus a per-column bias plus a residual, a sum that is stored too
    (rounded to the input's precision, and normalised as rounded, as PyTorch would see it); with CARRY_BIAS
    the sum is stored with a second per-column bias added (the next layer's, which it then need not add).
    """
    row = tl.program_id(0) * ROWS_BLOCK + tl.arange(0, ROWS_BLOCK)[:, None]
    column = tl.arange(0, WIDTH_BLOCK)[None, :]
    in_row = column < width
    mask = (row < rows) & in_row
    where = row.to(tl.int64) * width + column
    x = tl.load(x_ptr + where, mask=mask, other=0.0).to(tl.float32)
    if ADD:
        x += tl.load(bias_ptr + column, mask=in_row, other=0.0).to(tl.float32)
        x += tl.load(residual_ptr + where, mask=mask, other=0.0).to(tl.float32)
        x = x.to(sum_ptr.dtype.element_ty).to(tl.float32)
        carried = x
        if CARRY_BIAS:
            carried += tl.load(carried_bias_ptr + column, mask=in_row, other=0.0).to(tl.float32)
        tl.store(sum_ptr + where, carried.to(sum_ptr.dtype.element_ty), mask=mask)
    mean = tl.sum(x, axis=1) / width
    centred = tl.where(mask, x - mean[:, None], 0.0)
    inverse_std = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / width + eps)
    weight = tl.load(weight_ptr + column, mask=in_row, other=0.0).to(tl.float32)
    norm_bias = tl.load(norm_bias_ptr + column, mask=in_row, other=0.0).to(tl.float32)
    normalised = centred * inverse_std[:, None] * weight + norm_bias
    tl.store(out_ptr + where, normalised.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["rows"])
def add_with_channel_bias(
    a_ptr, b_ptr, bias_ptr, out_ptr, rows, channels, HAS_RESIDUAL: tl.constexpr, CHANNELS_BLOCK: tl.constexpr,
    ROWS_BLOCK: tl.constexpr,
):  # fmt: skip
    """One tile (pixel rows x a block of channels) of channels-last tensors: ``a + bias (+ b)``, the bias one
    per channel, loaded once a tile (no per-element index arithmetic). ``out`` may be ``a``. The channel block
    is fixed, so any channel count runs the same two compiled variants."""
    row = tl.program_id(0) * ROWS_BLOCK + tl.arange(0, ROWS_BLOCK)[:, None]
    channel = tl.program_id(1) * CHANNELS_BLOCK + tl.arange(0, CHANNELS_BLOCK)
    in_row = channel < channels
    mask = (row < rows) & in_row[None, :]
    where = row.to(tl.int64) * channels + channel[None, :]
    total = tl.load(a_ptr + where, mask=mask, other=0.0).to(tl.float32)
    total += tl.load(bias_ptr + channel, mask=in_row, other=0.0).to(tl.float32)[None, :]
    if HAS_RESIDUAL:
        total += tl.load(b_ptr + where, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + where, total.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["image_shift_stride", "pixels", "group_size"])
def group_norm_per_group(
    x_ptr, out_ptr, weight_ptr, bias_ptr, channel_shift_ptr, image_shift_ptr, image_shift_stride, pixels, channels,
    group_size, eps, MEMBER_BLOCK: tl.constexpr, ROWS_BLOCK: tl.constexpr, HAS_CHANNEL_SHIFT: tl.constexpr,
    HAS_IMAGE_SHIFT: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    """One group of one image, whole: its statistics (tiles merged with Chan's formula), then its normalised
    values (plus shifts, then SiLU if asked), in one program. For small activations, where the three-kernel
    path's launches cost more than its parallelism gains."""
    group = tl.program_id(0)
    image = tl.program_id(1)
    member = tl.arange(0, MEMBER_BLOCK)
    channel = group * group_size + member
    in_group = member < group_size
    input_shift = _input_shift(
        channel_shift_ptr, image_shift_ptr, image_shift_stride, image, channel, in_group, MEMBER_BLOCK,
        HAS_CHANNEL_SHIFT, HAS_IMAGE_SHIFT,
    )  # fmt: skip
    image_at = image.to(tl.int64) * pixels * channels
    mean = tl.zeros([1], dtype=tl.float32)
    deviation = tl.zeros([1], dtype=tl.float32)
    count = tl.zeros([1], dtype=tl.float32)
    for start in range(0, pixels, ROWS_BLOCK):
        row = start + tl.arange(0, ROWS_BLOCK)[:, None]
        mask = (row < pixels) & in_group[None, :]
        where = image_at + row.to(tl.int64) * channels + channel[None, :]
        tile = tl.load(x_ptr + where, mask=mask, other=0.0).to(tl.float32) + input_shift[None, :]
        tile = tl.where(mask, tile, 0.0)
        tile_count = (tl.minimum(pixels - start, ROWS_BLOCK) * group_size).to(tl.float32)
        tile_mean = tl.sum(tl.sum(tile, axis=1), axis=0) / tile_count
        centred = tl.where(mask, tile - tile_mean, 0.0)
        merged = count + tile_count
        delta = tile_mean - mean
        mean += delta * (tile_count / merged)
        deviation += tl.sum(tl.sum(centred * centred, axis=1), axis=0) + delta * delta * (count * tile_count / merged)
        count = merged
    inverse_std = 1.0 / tl.sqrt(deviation / count + eps)
    scale = tl.load(weight_ptr + channel, mask=in_group, other=0.0).to(tl.float32) * inverse_std
    shift = tl.load(bias_ptr + channel, mask=in_group, other=0.0).to(tl.float32) + (input_shift - mean) * scale
    for start in range(0, pixels, ROWS_BLOCK):
        row = start + tl.arange(0, ROWS_BLOCK)[:, None]
        mask = (row < pixels) & in_group[None, :]
        where = image_at + row.to(tl.int64) * channels + channel[None, :]
        normalised = tl.load(x_ptr + where, mask=mask, other=0.0).to(tl.float32) * scale[None, :] + shift[None, :]
        if SILU:
            normalised = normalised * tl.sigmoid(normalised)
        tl.store(out_ptr + where, normalised.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["rows", "width"])
def upsample_nearest_2x(
    x_ptr, out_ptr, rows, width, channels, CHANNELS_BLOCK: tl.constexpr, ROWS_BLOCK: tl.constexpr
):  # fmt: skip
    """One tile (input pixels x a block of channels) of a channels-last image: each pixel written to the 2x2
    output pixels it becomes. ``rows`` counts every image's input pixels, ``width`` is one input row's."""
    row = tl.program_id(0) * ROWS_BLOCK + tl.arange(0, ROWS_BLOCK)[:, None]
    channel = tl.program_id(1) * CHANNELS_BLOCK + tl.arange(0, CHANNELS_BLOCK)[None, :]
    mask = (row < rows) & (channel < channels)
    value = tl.load(x_ptr + row.to(tl.int64) * channels + channel, mask=mask)
    # input pixel (image, y, x) at row (image * height + y) * width + x; its first output pixel is on output row
    # 2 * (image * height + y), column 2 * x, in an output twice as wide
    line = (row // width).to(tl.int64)
    first = line * 4 * width + 2 * (row % width)
    for below in tl.static_range(2):
        for right in tl.static_range(2):
            where = (first + below * 2 * width + right) * channels + channel
            tl.store(out_ptr + where, value, mask=mask)
