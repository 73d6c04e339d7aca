"""The viewport source: a view given as matrices renders exactly what a camera with that view renders."""

from __future__ import annotations

from types import SimpleNamespace

import bpy
import numpy as np
import pytest

from blender_addon.capture import capture_camera
from blender_addon.viewport import capture_view, capture_viewport
from sd_core.errors import ValidationError
from tests.blender.conftest import RENDER_HEIGHT, RENDER_WIDTH


@pytest.fixture
def two_quads(build):
    near = build.emission_material("Near", (0.9, 0.2, 0.1))
    far = build.emission_material("Far", (0.1, 0.3, 0.9))
    build.quad("Floor", [(-4, -4, 0), (4, -4, 0), (4, 4, 0), (-4, 4, 0)], far)
    return build.quad("Box", [(-1, -1, 3), (1, -1, 3), (1, 1, 3), (-1, 1, 3)], near)


@pytest.mark.parametrize("kind", ["PERSP", "ORTHO"])
def test_a_view_renders_like_the_camera_it_came_from(scene, build, two_quads, kind):
    camera = build.camera(location=(0.5, -1.0, 10.0), rotation_x_degrees=8.0)
    camera.data.type = kind
    camera.data.lens, camera.data.ortho_scale = 40.0, 9.0
    camera.data.shift_x, camera.data.shift_y = 0.05, -0.03
    camera.data.clip_start, camera.data.clip_end = 0.5, 50.0
    depsgraph = bpy.context.evaluated_depsgraph_get()
    window = camera.calc_matrix_camera(depsgraph, x=RENDER_WIDTH, y=RENDER_HEIGHT)
    view = camera.matrix_world.inverted()
    expected = capture_camera(scene, [two_quads])
    objects_before = set(bpy.data.objects)

    got = capture_view(scene, view, window, RENDER_WIDTH, RENDER_HEIGHT, [two_quads])

    assert np.allclose(got.camera.projection_matrix, expected.camera.projection_matrix, atol=1e-5)
    assert np.allclose(got.camera.view_matrix, expected.camera.view_matrix, atol=1e-5)
    visible = np.isfinite(expected.depth)
    assert np.array_equal(np.isfinite(got.depth), visible)
    assert np.allclose(got.depth[visible], expected.depth[visible], rtol=1e-4)
    assert np.array_equal(got.mask, expected.mask) and got.mask.any()
    assert set(bpy.data.objects) == objects_before and scene.camera == camera
    assert not [c for c in bpy.data.cameras if c.name.startswith("SD Viewport")]


def _viewport_region_3d():
    area = next(area for area in bpy.context.window.screen.areas if area.type == "VIEW_3D")
    return area.spaces.active.region_3d


def test_the_open_viewport_is_captured_at_its_aspect(scene, build, two_quads):
    camera = build.camera(location=(0.0, 0.0, 10.0))
    region_3d = _viewport_region_3d()  # the factory screen has a 3D Viewport even in background mode
    region_3d.view_perspective = "PERSP"
    region_3d.view_matrix = camera.matrix_world.inverted()
    captured = capture_viewport(bpy.context, [two_quads], long_side=96)
    assert max(captured.width, captured.height) == 96
    assert captured.mask.any() and np.isfinite(captured.depth).any()
    assert np.allclose(captured.camera.view_matrix, np.array(region_3d.view_matrix), atol=1e-5)


def test_looking_through_the_camera_captures_the_camera(scene, build, two_quads):
    build.camera(location=(0.0, 0.0, 10.0))
    _viewport_region_3d().view_perspective = "CAMERA"
    captured = capture_viewport(bpy.context, [two_quads], long_side=512)
    assert (captured.width, captured.height) == (RENDER_WIDTH, RENDER_HEIGHT)


def test_without_an_open_viewport_the_error_says_what_to_use(scene, build):
    build.camera()
    no_interface = SimpleNamespace(area=None, window=None, scene=scene)
    with pytest.raises(ValidationError, match="use the camera source"):
        capture_viewport(no_interface)
