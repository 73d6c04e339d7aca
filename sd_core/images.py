"""Image conversions and the pixel-exact operations around diffusion.

Arrays are (H, W, C) float32 in [0, 1], top row first. Diffusion works on sizes that are multiples
of 8; ``pad_to_multiple`` / ``crop`` keep the caller's size exactly by edge-padding and cropping back.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from sd_core.errors import ValidationError

LATENT_SCALE = 8

PNG_COMPRESS_LEVEL = 1
"""zlib's fastest level, near Blender's own 15% for packed PNGs: a fraction of level 6's encoding time."""


def to_pil(pixels: np.ndarray) -> Image.Image:
    """float [0,1] (H,W,3) or (H,W) -> 8-bit PIL image."""
    data = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(data)


def png_bytes(pixels: np.ndarray) -> bytes:
    """float [0,1] (H,W,3) or (H,W,4) -> an 8-bit PNG file's bytes, compressed for speed (any thread)."""
    buffer = io.BytesIO()
    to_pil(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def from_pil(image: Image.Image) -> np.ndarray:
    """8-bit PIL image -> float32 (H,W,3) in [0,1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def load_rgb(path: str | Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return from_pil(image)
    except (OSError, ValueError) as error:
        raise ValidationError(f"Cannot read image '{path}': {error}") from error


def load_mask(path: str | Path) -> np.ndarray:
    """A mask file -> (H,W) float32; white = generate. Uses alpha when the file has it and RGB is flat."""
    try:
        with Image.open(path) as image:
            if image.mode in ("RGBA", "LA"):
                alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
                gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
                return alpha if np.ptp(gray) == 0 else gray
            return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as error:
        raise ValidationError(f"Cannot read mask '{path}': {error}") from error


def padded_size(width: int, height: int) -> tuple[int, int]:
    """The smallest multiple-of-8 size that holds (width, height)."""
    return -(-width // LATENT_SCALE) * LATENT_SCALE, -(-height // LATENT_SCALE) * LATENT_SCALE


def pad_to_multiple(pixels: np.ndarray) -> np.ndarray:
    """Edge-pad right and bottom up to multiples of 8 (edge padding avoids dark borders bleeding in)."""
    height, width = pixels.shape[:2]
    target_w, target_h = padded_size(width, height)
    if (target_w, target_h) == (width, height):
        return pixels
    pad = [(0, target_h - height), (0, target_w - width)] + [(0, 0)] * (pixels.ndim - 2)
    return np.pad(pixels, pad, mode="edge")


def crop(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    return pixels[:height, :width]


def prepare_mask(mask: np.ndarray, grow: int = 0, feather: int = 0) -> np.ndarray:
    """Binarise, grow by ``grow`` pixels, then feather with a blur of ``feather`` pixels. Result in [0,1]."""
    binary = mask > 0.5
    if grow > 0:
        binary = dilate(binary, grow)
    image = Image.fromarray(binary.astype(np.uint8) * 255)
    if feather > 0:
        image = image.filter(ImageFilter.GaussianBlur(feather))
    return np.asarray(image, dtype=np.float32) / 255.0


def dilate(binary: np.ndarray, radius: int) -> np.ndarray:
    """Grow a boolean mask by ``radius`` pixels in a square, like PIL's MaxFilter(2 * radius + 1).

    Separable: along rows, then along the rows of the transposed result (numpy's running sums are fast along
    contiguous rows only). Each pass is a window sum from a running count: a pixel is set when its window
    holds any set pixel, so the cost does not grow with the radius. At 1024² and 8 pixels: about 8 ms (torch's
    CPU max-pool took 48 ms, PIL's MaxFilter over a second).
    """
    rows_grown = _grow_rows(binary, radius)
    return _grow_rows(np.ascontiguousarray(rows_grown.T), radius).T


def _grow_rows(binary: np.ndarray, radius: int) -> np.ndarray:
    """One pass of ``dilate``: a pixel is set when any pixel of its row within ``radius`` is."""
    height, width = binary.shape
    span = 2 * radius + 1
    # Running counts, with zeros before the first pixel and the last count repeated after the last: the window
    # [x - radius, x + radius], clipped to the row, holds padded[x + span] - padded[x] set pixels.
    padded = np.empty((height, width + span), np.int32)
    padded[:, : radius + 1] = 0
    np.cumsum(binary, axis=1, dtype=np.int32, out=padded[:, radius + 1 : radius + 1 + width])
    padded[:, radius + 1 + width :] = padded[:, radius + width : radius + width + 1]
    return padded[:, span:] > padded[:, :width]


def composite(generated: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend so that pixels with mask 0 are *exactly* the original (the VAE round trip alters them).

    Only the mask's bounding box is blended; the rest is the original copied (an inpainted area is usually
    a small part of the picture: at 1024², a quarter of it masked and feathered by 8 pixels, 10 ms instead of 24).
    """
    out = np.array(original, dtype=np.float32)
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return out
    box = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
    weight = mask[box][..., None]
    blended = generated[box] * weight + original[box] * (1.0 - weight)
    out[box] = np.where(weight > 0.0, blended, original[box])
    return out
