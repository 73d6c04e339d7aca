"""Refuse sizes the GPU cannot hold before starting, instead of failing after minutes of work.

The largest single allocation peak of a generation is the VAE decode at full resolution (the UNet
works at 1/8 size). Its activation memory grows with the pixel count: about 1 KiB per output pixel
in half precision (128-256 channels, a few live tensors), which is what this estimate uses.
"""

from __future__ import annotations

from sd_core.errors import ValidationError

DECODE_BYTES_PER_PIXEL_FP16 = 1024
GIB = 2**30


def decode_bytes(width: int, height: int, dtype_bytes: int) -> int:
    """Estimated peak activation memory of one VAE decode at ``width`` x ``height``."""
    return width * height * DECODE_BYTES_PER_PIXEL_FP16 * dtype_bytes // 2


def check_fits(width: int, height: int, dtype_bytes: int, free_bytes: int, vae_tiling: bool) -> None:
    """Raise ``ValidationError`` if decoding this size needs more than the free device memory."""
    if vae_tiling:
        return  # tiled decoding works in fixed-size tiles
    needed = decode_bytes(width, height, dtype_bytes)
    if needed > free_bytes:
        raise ValidationError(
            f"{width}x{height} needs about {needed / GIB:.1f} GiB of GPU memory to decode, but only "
            f"{free_bytes / GIB:.1f} GiB is free: turn on 'VAE tiling' (low-VRAM options) or lower the size."
        )
