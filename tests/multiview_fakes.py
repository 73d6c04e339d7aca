"""Deterministic stand-ins for the diffusion model in multi-view tests (shared by core and Blender tests).

Tiny random models paint noise, so consistency cannot be judged on them. These generators paint each
view as a known function of the *world position* seen at each pixel (recovered from the view's depth),
so a perfectly consistent set of views exists and the fusion can be measured against it; the
inconsistent one adds a different tint per view, like a model that forgets what the others painted.
Both honour the inpainting contract: pixels where the soft mask is 0 come back unchanged.
"""

from __future__ import annotations

import numpy as np

from sd_core import images
from sd_core.multiview import ViewTask
from sd_core.projection import CameraModel


def world_color(points: np.ndarray) -> np.ndarray:
    """A smooth colour field over world space (N, 3) -> (N, 3), varied enough to show misregistration."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.stack(
        [0.5 + 0.35 * np.sin(2.1 * x + 0.7 * z), 0.5 + 0.35 * np.cos(1.7 * y - 0.9 * x), 0.5 + 0.35 * np.sin(2.3 * z)],
        axis=-1,
    ).astype(np.float32)


def unproject(camera: CameraModel, depth: np.ndarray) -> np.ndarray:
    """(H, W) planar depth to (H, W, 3) world points at pixel centres (garbage where depth is inf)."""
    height, width = depth.shape
    rows, columns = np.mgrid[0:height, 0:width] + 0.5
    ndc_x = columns / width * 2.0 - 1.0
    ndc_y = 1.0 - rows / height * 2.0
    projection = camera.projection_matrix
    finite = np.where(np.isfinite(depth), depth, 0.0)
    if camera.is_orthographic:
        camera_x = (ndc_x - projection[0, 3]) / projection[0, 0]
        camera_y = (ndc_y - projection[1, 3]) / projection[1, 1]
    else:
        camera_x = (ndc_x + projection[0, 2]) / projection[0, 0] * finite
        camera_y = (ndc_y + projection[1, 2]) / projection[1, 1] * finite
    camera_points = np.stack([camera_x, camera_y, -finite, np.ones_like(finite)], axis=-1)
    return (camera_points @ camera.camera_to_world.T)[..., :3]


def paint_world(task: ViewTask, tint: np.ndarray | None = None) -> np.ndarray:
    """The view painted with ``world_color`` (plus ``tint``), composited into ``task.image`` by the soft mask."""
    painted = world_color(unproject(task.camera, task.depth))
    if tint is not None:
        painted = np.clip(painted + tint, 0.0, 1.0)
    painted = np.where(np.isfinite(task.depth)[..., None], painted, task.image)
    return images.composite(painted.astype(np.float32), task.image, task.soft_mask)


def consistent_generator(task: ViewTask) -> np.ndarray:
    return paint_world(task)


VIEW_TINTS = np.array([[0.15, -0.1, 0.0], [-0.15, 0.1, 0.05], [0.0, 0.15, -0.15], [0.1, 0.0, 0.15]], np.float32)


def inconsistent_generator(task: ViewTask) -> np.ndarray:
    """Every view disagrees with the others by up to 0.3 per channel: seams show unless fusion hides them."""
    return paint_world(task, VIEW_TINTS[task.index % len(VIEW_TINTS)])


def independent(generator):
    """The naive baseline's generator: each view painted whole, ignoring what earlier views painted."""

    def generate(task: ViewTask) -> np.ndarray:
        whole = np.isfinite(task.depth).astype(np.float32)
        return generator(ViewTask(task.index, task.image, whole, whole, task.depth, task.camera, task.direction, 0, 0))

    return generate
