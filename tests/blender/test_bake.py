"""Projection baking, measured end to end: bake a known pattern from the camera, re-render, compare.

The scene is unlit (emission materials, Standard view transform, a tiny pixel filter) so a re-rendered
pixel shows exactly the texture value under it: where the camera saw the surface it must reproduce the
projected pattern; where the surface was hidden or turned away it must keep its old colour.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from blender_addon.bake import PROJECTION_UV_NAME, project_onto_meshes
from blender_addon.capture import capture_camera
from sd_core.errors import ValidationError
from tests.blender.conftest import RENDER_HEIGHT, RENDER_WIDTH, SceneBuilder, bpy

OLD_GREY = 0.5  # display value of the untouched material
TOLERANCE = 0.03  # ~8/255: 8-bit texture quantisation and texel filtering leave well under this


def pattern() -> np.ndarray:
    """Smooth but position-sensitive: a one-pixel shift changes R or B by up to ~0.15."""
    rows, columns = np.mgrid[0:RENDER_HEIGHT, 0:RENDER_WIDTH].astype(np.float32) + 0.5
    return np.stack(
        [
            0.5 + 0.4 * np.sin(2 * np.pi * columns / 16),
            0.1 + 0.8 * rows / RENDER_HEIGHT,
            0.5 + 0.4 * np.cos(2 * np.pi * rows / 12),
        ],
        axis=2,
    ).astype(np.float32)


def tilted_square(centre: tuple[float, float, float], size: float, tilt_degrees: float) -> list[tuple[float, ...]]:
    tilt = math.radians(tilt_degrees)
    u = np.array([1.0, 0.0, 0.0]) * size / 2
    v = np.array([0.0, math.cos(tilt), math.sin(tilt)]) * size / 2
    c = np.array(centre)
    return [tuple(c - u - v), tuple(c + u - v), tuple(c + u + v), tuple(c - u + v)]


def eroded(mask: np.ndarray) -> np.ndarray:
    """The mask without its one-pixel border."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    return np.all([padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)], axis=0)


@pytest.fixture
def bake_scene(scene, build: SceneBuilder) -> dict[str, bpy.types.Object]:
    """A tilted quad with UVs, a UV-less cube and an unselected occluder in front of the quad."""
    scene.cycles.filter_width = 0.01
    build.camera((0.0, 0.0, 10.0))
    grey = build.emission_material("Old grey", (0.21404114,) * 3)
    quad = build.quad("Tilted", tilted_square((0.9, -0.4, 2.0), 3.0, 35.0), grey)
    occluder = build.quad(
        "Occluder", tilted_square((0.9, -0.9, 6.0), 0.8, 0.0), build.emission_material("Blue", (0, 0, 1))
    )

    bpy.ops.mesh.primitive_cube_add(size=1.2, location=(-1.6, 0.9, 1.0))
    cube = bpy.context.active_object
    cube.data.uv_layers.remove(cube.data.uv_layers[0])
    cube_material = build.emission_material("Old cube", (0.0, 0.0, 0.0))
    tree = cube_material.node_tree
    rgb = tree.nodes.new("ShaderNodeRGB")
    rgb.outputs[0].default_value = (0.21404114, 0.21404114, 0.21404114, 1.0)
    tree.links.new(rgb.outputs[0], tree.nodes["Emission"].inputs["Color"])
    cube.data.materials.append(cube_material)
    return {"quad": quad, "cube": cube, "occluder": occluder}


def test_projection_reproduces_the_image_and_spares_hidden_texels(scene, bake_scene) -> None:
    quad, cube, occluder = bake_scene["quad"], bake_scene["cube"], bake_scene["occluder"]
    uvs_before = np.empty(8)
    quad.data.uv_layers["UVMap"].uv.foreach_get("vector", uvs_before)
    image = pattern()
    capture = capture_camera(scene, [quad, cube])

    results = project_onto_meshes(image, capture, [quad, cube], texture_size=256)

    # 1. Seen from the same camera, every visible surface pixel shows the projected image.
    after = capture_camera(scene, [quad, cube])
    visible = capture.mask > 0
    error = np.abs(after.color - image).max(axis=2)[visible]
    within = float((error < TOLERANCE).mean())
    median = np.median(error)
    print(
        f"\nprojection: {within:.2%} of {visible.sum()} visible pixels within {TOLERANCE} (median error {median:.4f})"
    )
    assert within >= 0.95

    # 2. What the occluder hid keeps the old colour once the occluder is gone.
    occluder.hide_render = True
    uncovered = capture_camera(scene, [quad])
    hidden = (uncovered.mask > 0) & (capture.mask == 0)
    kept = float((np.abs(uncovered.color[hidden] - OLD_GREY).max(axis=1) < TOLERANCE).mean())
    print(f"occluded: {kept:.2%} of {hidden.sum()} pixels kept their old colour")
    assert hidden.sum() > 50 and kept >= 0.95

    # 3. The cube's bottom, facing away from the camera, is untouched: look at it from below.
    scene.camera.location = (-1.6, 0.9, -6.0)
    scene.camera.rotation_euler = (math.pi, 0.0, 0.0)
    below = capture_camera(scene, [cube])
    # Silhouette pixels blend with the black background, so the old colour is checked inside them only;
    # none of the face may show the (colourful) projected pattern.
    bottom = eroded(below.mask > 0)
    untouched = float((np.abs(below.color[bottom] - OLD_GREY).max(axis=1) < TOLERANCE).mean())
    print(f"back-facing: {untouched:.2%} of {bottom.sum()} bottom pixels kept their old colour")
    assert bottom.sum() > 50 and untouched >= 0.99
    assert np.ptp(below.color[below.mask > 0], axis=1).max() < TOLERANCE

    # Non-destructive: existing UVs untouched, new UVs only where none existed, new packed images,
    # the old colour source still linked under the projection.
    uvs_after = np.empty(8)
    quad.data.uv_layers["UVMap"].uv.foreach_get("vector", uvs_after)
    assert np.array_equal(uvs_before, uvs_after) and len(quad.data.uv_layers) == 1
    assert [layer.name for layer in cube.data.uv_layers] == [PROJECTION_UV_NAME]
    assert [r.uv_map for r in results] == ["UVMap", PROJECTION_UV_NAME]
    assert all(r.image.packed_file is not None and r.image.size[:] == (256, 256) for r in results)
    mix = next(node for node in cube.material_slots[0].material.node_tree.nodes if node.bl_idname == "ShaderNodeMix")
    a_input = next(socket for socket in mix.inputs if socket.identifier == "A_Color")
    assert a_input.links[0].from_node.bl_idname == "ShaderNodeRGB"
    assert 0.0 < results[0].seen_fraction < 1.0


def test_shared_material_is_copied_and_empty_objects_get_one(scene, build: SceneBuilder) -> None:
    build.camera((0.0, 0.0, 10.0))
    shared = build.emission_material("Shared", (0.2, 0.2, 0.2))
    first = build.quad("First", tilted_square((-1, 0, 0), 1.5, 0), shared)
    build.quad("Second", tilted_square((1, 0, 0), 1.5, 0), shared)
    bare = build.quad("Bare", tilted_square((0, 1.5, 0), 1.0, 0))
    capture = capture_camera(scene)

    project_onto_meshes(pattern(), capture, [first, bare], texture_size=64)

    assert first.material_slots[0].material != shared
    assert not any(node.label == "SD Projection" for node in shared.node_tree.nodes)
    assert bare.material_slots[0].material.name.startswith("Bare")


def test_bad_input_is_refused_before_anything_changes(scene, bake_scene) -> None:
    capture = capture_camera(scene, [bake_scene["quad"]])
    counts = (len(bpy.data.images), len(bpy.data.materials), len(bake_scene["cube"].data.uv_layers))
    with pytest.raises(ValidationError, match="Nothing is selected"):
        project_onto_meshes(pattern(), capture, [])
    with pytest.raises(ValidationError, match=r"Only meshes.*Camera"):
        project_onto_meshes(pattern(), capture, [bake_scene["cube"], scene.camera])
    with pytest.raises(ValidationError, match="shape"):
        project_onto_meshes(pattern()[:, :40], capture, [bake_scene["cube"]])
    assert (len(bpy.data.images), len(bpy.data.materials), len(bake_scene["cube"].data.uv_layers)) == counts


def test_a_projected_texture_survives_saving_and_reopening_the_blend(scene, build: SceneBuilder, tmp_path) -> None:
    """The texture is packed PNG data: the .blend carries it, and reopened it has the very pixels it had."""
    build.camera((0.0, 0.0, 10.0))
    quad = build.quad(
        "Quad", [(-2, -2, 0), (2, -2, 0), (2, 2, 0), (-2, 2, 0)], build.emission_material("Grey", (0.5,) * 3)
    )
    (result,) = project_onto_meshes(pattern(), capture_camera(scene, [quad]), [quad], texture_size=64)
    name = result.image.name
    before = np.empty(64 * 64 * 4, dtype=np.float32)
    result.image.pixels.foreach_get(before)
    assert np.ptp(before[0::4]) > 0.5  # the pattern, not a flat colour
    path = tmp_path / "textured.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.open_mainfile(filepath=str(path))
    reopened = bpy.data.images[name]
    after = np.empty(64 * 64 * 4, dtype=np.float32)
    reopened.pixels.foreach_get(after)
    assert reopened.packed_file is not None and tuple(reopened.size) == (64, 64)
    assert np.array_equal(before, after)
