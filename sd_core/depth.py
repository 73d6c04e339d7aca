"""Blender depth to a ControlNet depth map.

Depth ControlNets were trained on MiDaS output: *relative inverse depth* (disparity), min-max
normalised per image, near = white. Blender gives exact linear depth instead, so the map is built
the same way from it: disparity ``1 / depth``, normalised over the geometry that is actually visible.
Normalising over visible pixels (not the camera clip range, not the 1e10 that Cycles writes for the
background) keeps the whole grey range for the subject; percentiles instead of min/max keep one
stray near pixel from flattening everything else. The farthest geometry stays a dark grey
(``far_level``) so it is still told apart from the background, which is black.
"""

from __future__ import annotations

import numpy as np

from sd_core.errors import ValidationError

BACKGROUND_DEPTH = 1e9
"""Depth at or beyond this is background: Cycles writes 1e10 where a ray hits nothing."""


def visible_depth_mask(depth: np.ndarray) -> np.ndarray:
    """Pixels that show geometry: finite, positive depth short of the background value."""
    return np.isfinite(depth) & (depth > 0.0) & (depth < BACKGROUND_DEPTH)


def depth_to_control_image(
    distance: np.ndarray,
    *,
    near_percentile: float = 99.5,
    far_percentile: float = 0.5,
    far_level: float = 0.08,
) -> np.ndarray:
    """(H, W) linear depth (planar Z or ray distance) to an (H, W, 3) float32 depth-ControlNet image.

    Near is bright, the farthest visible geometry is ``far_level`` grey, background (inf, NaN,
    <= 0 or >= 1e9) is black. ``near_percentile``/``far_percentile`` are percentiles of the visible
    pixels' disparity that map to white and to ``far_level``; values beyond them are clipped.
    """
    depth = np.asarray(distance)
    if depth.ndim != 2:
        raise ValidationError(f"A depth map must be a 2D (height, width) array, got shape {depth.shape}.")
    if not 0.0 <= far_percentile < near_percentile <= 100.0:
        raise ValidationError("Depth percentiles must satisfy 0 <= far < near <= 100.")
    if not 0.0 <= far_level < 1.0:
        raise ValidationError("The far level of a depth map must be in [0, 1).")

    visible = visible_depth_mask(depth)
    control = np.zeros(depth.shape, dtype=np.float32)
    if visible.any():
        disparity = 1.0 / depth[visible].astype(np.float64)
        far_disparity, near_disparity = np.percentile(disparity, [far_percentile, near_percentile])
        span = near_disparity - far_disparity
        # A single plane facing the camera has no span: all of it is "near".
        normalised = np.clip((disparity - far_disparity) / span, 0.0, 1.0) if span > 0.0 else np.ones_like(disparity)
        control[visible] = far_level + (1.0 - far_level) * normalised
    return np.repeat(control[:, :, None], 3, axis=2)
