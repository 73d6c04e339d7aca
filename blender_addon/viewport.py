"""Capture what the 3D viewport shows: colour, depth and mask of exactly that view.

A viewport is a view matrix and a projection matrix. A temporary camera built from those two
matrices renders the same view with the scene's engine, so the viewport source gets the same real
depth and object mask as the camera source, aligned pixel for pixel, through ``capture_camera``.
The temporary camera and every changed setting are removed again afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import bpy
from mathutils import Matrix

from sd_core.errors import ValidationError

from .capture import CameraCapture, capture_camera

SENSOR_WIDTH_MM = 36.0


def _configure_camera(data: bpy.types.Camera, window_matrix: Matrix, width: int, height: int) -> None:
    """Set lens, shift and clipping so the camera's projection equals ``window_matrix`` at this size."""
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = SENSOR_WIDTH_MM
    is_perspective = abs(window_matrix[3][3]) < 0.5
    if is_perspective:
        data.type = "PERSP"
        data.lens = window_matrix[0][0] * SENSOR_WIDTH_MM / 2.0
        near = window_matrix[2][3] / (window_matrix[2][2] - 1.0)
        far = window_matrix[2][3] / (window_matrix[2][2] + 1.0)
        data.shift_x = window_matrix[0][2] / 2.0
        data.shift_y = window_matrix[1][2] * height / (2.0 * width)
    else:
        data.type = "ORTHO"
        data.ortho_scale = 2.0 / window_matrix[0][0]
        span = 2.0 / window_matrix[2][2]  # = -(far - near)
        centre = window_matrix[2][3] * span / 2.0  # = (far + near) / 2
        near, far = centre + span / 2.0, centre - span / 2.0
        data.shift_x = -window_matrix[0][3] / 2.0
        data.shift_y = -window_matrix[1][3] * height / (2.0 * width)
    data.clip_start, data.clip_end = near, far


@contextmanager
def _temporary_camera(scene: bpy.types.Scene, view_matrix: Matrix, window_matrix: Matrix, width: int, height: int):
    """A camera for this view as the scene camera, at this resolution; everything restored on exit."""
    render = scene.render
    saved = (scene.camera, render.resolution_x, render.resolution_y, render.resolution_percentage)
    saved_aspect = (render.pixel_aspect_x, render.pixel_aspect_y)
    data = bpy.data.cameras.new("SD Viewport Capture")
    camera = bpy.data.objects.new("SD Viewport Capture", data)
    scene.collection.objects.link(camera)
    try:
        camera.matrix_world = view_matrix.inverted()
        _configure_camera(data, window_matrix, width, height)
        scene.camera = camera
        render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
        render.pixel_aspect_x = render.pixel_aspect_y = 1.0
        yield camera
    finally:
        scene.camera, render.resolution_x, render.resolution_y, render.resolution_percentage = saved
        render.pixel_aspect_x, render.pixel_aspect_y = saved_aspect
        bpy.data.objects.remove(camera)
        bpy.data.cameras.remove(data)


def capture_view(
    scene: bpy.types.Scene,
    view_matrix: Matrix,
    window_matrix: Matrix,
    width: int,
    height: int,
    objects: Iterable[bpy.types.Object] = (),
    samples: int | None = None,
) -> CameraCapture:
    """Render the view given by a view (world -> view) and window (projection) matrix."""
    with _temporary_camera(scene, view_matrix, window_matrix, width, height):
        return capture_camera(scene, objects, samples=samples)


def _view_3d_regions(context: bpy.types.Context) -> Iterator[tuple[bpy.types.Area, bpy.types.Region]]:
    areas = [context.area] if context.area is not None and context.area.type == "VIEW_3D" else []
    if context.window is not None:
        areas += [area for area in context.window.screen.areas if area.type == "VIEW_3D"]
    for area in areas:
        for region in area.regions:
            if region.type == "WINDOW":
                yield area, region


def capture_viewport(
    context: bpy.types.Context,
    objects: Iterable[bpy.types.Object] = (),
    long_side: int = 512,
    samples: int | None = None,
) -> CameraCapture:
    """Capture the active 3D viewport at its aspect ratio, ``long_side`` pixels on its longer side (``samples``
    as in ``capture_camera``)."""
    found = next(_view_3d_regions(context), None)
    if found is None:
        raise ValidationError("No 3D Viewport is open (or Blender runs without its interface): use the camera source.")
    area, region = found
    region_3d = area.spaces.active.region_3d
    scene = context.scene
    if region_3d.view_perspective == "CAMERA":  # looking through the scene camera: that is the camera source
        return capture_camera(scene, objects, samples=samples)
    scale = long_side / max(region.width, region.height)
    width, height = max(64, round(region.width * scale)), max(64, round(region.height * scale))
    return capture_view(scene, region_3d.view_matrix, region_3d.window_matrix, width, height, objects, samples)
