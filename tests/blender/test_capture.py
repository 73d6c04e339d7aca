"""Scene capture against a scene of exactly known geometry: depth, mask, colour, camera, restoration."""

from __future__ import annotations

import numpy as np
import pytest

from blender_addon.capture import capture_camera, capture_image_editor
from sd_core.depth import depth_to_control_image
from sd_core.errors import ValidationError
from sd_core.projection import project_points
from tests.blender.conftest import LENS_MM, RENDER_HEIGHT, RENDER_WIDTH, SENSOR_MM, SceneBuilder, bpy

GREY_LINEAR = 0.21404114  # sRGB 0.5


def pixel_box(x0: float, x1: float, y0: float, y1: float, depth: float) -> tuple[slice, slice]:
    """Rows and columns whose pixel centres see the world rectangle at ``depth`` (camera down -Z, at origin)."""
    pixels_per_unit = LENS_MM / SENSOR_MM * RENDER_WIDTH / depth
    columns = RENDER_WIDTH / 2 + np.array([x0, x1]) * pixels_per_unit
    rows = RENDER_HEIGHT / 2 - np.array([y1, y0]) * pixels_per_unit
    rows, columns = np.clip(rows, 0, RENDER_HEIGHT), np.clip(columns, 0, RENDER_WIDTH)
    return slice(round(rows[0]), round(rows[1])), slice(round(columns[0]), round(columns[1]))


def rectangle(x0: float, x1: float, y0: float, y1: float, z: float) -> list[tuple[float, float, float]]:
    return [(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)]


@pytest.fixture
def known_scene(build: SceneBuilder) -> dict[str, bpy.types.Object]:
    """Camera at z=10 looking down; grey floor at depth 10, red quad at depth 5, blue blocker at depth 3."""
    build.camera((0.0, 0.0, 10.0))
    floor = build.quad("Floor", rectangle(-3, 3, -3, 3, 0), build.emission_material("Grey", (GREY_LINEAR,) * 3))
    red = build.quad("Red", rectangle(-1.2, -0.3, 0.3, 0.9, 5), build.emission_material("Red", (1, 0, 0)))
    blocker = build.quad("Blocker", rectangle(-0.36, 0, 0, 0.36, 7), build.emission_material("Blue", (0, 0, 1)))
    return {"floor": floor, "red": red, "blocker": blocker}


def expected_regions() -> dict[str, tuple[slice, slice]]:
    return {
        "floor": pixel_box(-3, 3, -3, 3, 10),
        "red": pixel_box(-1.2, -0.3, 0.3, 0.9, 5),
        "blocker": pixel_box(-0.36, 0, 0, 0.36, 3),
    }


def label_image() -> np.ndarray:
    """Which object each pixel centre sees: 0 background, 1 floor, 2 red, 3 blocker (painter's order)."""
    labels = np.zeros((RENDER_HEIGHT, RENDER_WIDTH), dtype=np.int64)
    for label, region in enumerate(expected_regions().values(), start=1):
        labels[region] = label
    return labels


def test_depth_mask_and_colour_match_the_known_geometry(scene, known_scene) -> None:
    capture = capture_camera(scene, [known_scene["red"]])
    labels = label_image()
    assert (capture.width, capture.height) == (RENDER_WIDTH, RENDER_HEIGHT)
    assert capture.color.shape == (RENDER_HEIGHT, RENDER_WIDTH, 3) and capture.color.dtype == np.float32

    expected_depth = np.array([np.inf, 10.0, 5.0, 3.0])[labels]
    assert np.allclose(capture.depth, expected_depth, rtol=1e-4)

    # Mask: exactly the red quad's silhouette minus what the unselected blocker hides.
    assert np.array_equal(capture.mask, (labels == 2).astype(np.float32))
    assert capture.mask[: RENDER_HEIGHT // 2, : RENDER_WIDTH // 2].sum() == capture.mask.sum()  # top-left

    # Colour is pixel-aligned with depth: away from anti-aliased edges each pixel has its object's colour.
    expected_color = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [1, 0, 0], [0, 0, 1]], dtype=np.float32)[labels]
    padded = np.pad(labels, 1, mode="edge")
    neighbours = [padded[dy : dy + RENDER_HEIGHT, dx : dx + RENDER_WIDTH] for dy in range(3) for dx in range(3)]
    interior = np.all([n == labels for n in neighbours], axis=0)
    assert np.abs(capture.color[interior] - expected_color[interior]).max() < 0.01


def test_control_image_puts_near_bright_and_background_black(scene, known_scene) -> None:
    control = depth_to_control_image(capture_camera(scene).depth)[..., 0]
    labels = label_image()
    level = {label: np.unique(control[labels == label]) for label in range(4)}
    assert all(len(values) == 1 for values in level.values())
    assert level[3][0] == 1.0 and level[3][0] > level[2][0] > level[1][0] > level[0][0] == 0.0


def test_camera_matrices_reproject_the_geometry(scene, known_scene) -> None:
    capture = capture_camera(scene, [known_scene["red"]])
    corners = np.array(rectangle(-1.2, -0.3, 0.3, 0.9, 5))
    projected = project_points(capture.camera, corners)
    rows, columns = pixel_box(-1.2, -0.3, 0.3, 0.9, 5)
    expected = [
        [columns.start, rows.stop],
        [columns.stop, rows.stop],
        [columns.stop, rows.start],
        [columns.start, rows.start],
    ]
    assert np.allclose(projected.pixel_xy, expected, atol=1e-3)
    assert np.allclose(projected.depth, 5.0)


def test_colour_follows_the_scene_view_transform(scene, known_scene, tmp_path) -> None:
    scene.view_settings.view_transform = "AgX"
    scene.view_settings.exposure = 0.5
    capture = capture_camera(scene)
    scene.render.dither_intensity = 0.0
    scene.render.filepath = str(tmp_path / "reference.png")
    bpy.ops.render.render(write_still=True)
    reference_image = bpy.data.images.load(str(tmp_path / "reference.png"))
    reference = np.empty(RENDER_WIDTH * RENDER_HEIGHT * 4, dtype=np.float32)
    reference_image.pixels.foreach_get(reference)
    reference = reference.reshape(RENDER_HEIGHT, RENDER_WIDTH, 4)[::-1, :, :3]
    assert np.abs(capture.color - reference).max() < 1.5 / 255  # the reference is an 8-bit PNG
    assert abs(float(capture.color[expected_regions()["floor"]].mean()) - 0.5) > 0.02  # not plain sRGB


def scene_state(scene: bpy.types.Scene) -> dict[str, object]:
    render, layer = scene.render, scene.view_layers[0]
    return {
        "settings": (
            render.filepath,
            render.image_settings.media_type,
            render.image_settings.file_format,
            render.image_settings.color_depth,
            render.use_compositing,
            render.use_border,
            layer.use_pass_z,
            layer.use_pass_object_index,
            scene.cycles.samples,
            render.engine,
        ),
        "pass_index": {obj.name: obj.pass_index for obj in scene.objects},
        "images": sorted(image.name for image in bpy.data.images),
    }


def test_capture_restores_the_scene(scene, known_scene) -> None:
    known_scene["floor"].pass_index = 4
    scene.render.use_border = True
    before = scene_state(scene)
    capture = capture_camera(scene, [known_scene["red"], known_scene["blocker"]], samples=1)
    assert scene_state(scene) == before
    assert capture.mask.sum() > 0


def test_bad_input_raises_and_leaves_the_scene_intact(scene, known_scene) -> None:
    before = scene_state(scene)
    scene.camera = None
    with pytest.raises(ValidationError, match="no active camera"):
        capture_camera(scene)
    scene.camera = bpy.data.objects["Camera"]
    scene.render.engine = "BLENDER_WORKBENCH"
    with pytest.raises(ValidationError, match="Cycles"):
        capture_camera(scene, [known_scene["red"]])
    scene.render.engine = "CYCLES"
    assert scene_state(scene) == before


def test_capture_image_editor_flips_rows_and_reads_alpha_or_mask(scene) -> None:
    image = bpy.data.images.new("Painted", 4, 3, alpha=True)
    pixels = np.zeros((3, 4, 4), dtype=np.float32)
    pixels[0] = [1, 0, 0, 1]  # Blender's first row is the bottom one
    pixels[1:] = [0, 0, 1, 0.25]
    image.pixels.foreach_set(pixels.ravel())
    rgb, mask = capture_image_editor(image)
    assert np.allclose(rgb[2], [1, 0, 0]) and np.allclose(rgb[0], [0, 0, 1])
    assert np.allclose(mask[2], 0.0) and np.allclose(mask[:2], 0.75, atol=1 / 255)  # 8-bit alpha

    linear = bpy.data.images.new("Linear", 4, 3, float_buffer=True)
    linear.pixels.foreach_set(np.full(48, GREY_LINEAR, dtype=np.float32))
    mask_image = bpy.data.images.new("Mask", 4, 3)
    mask_image.pixels.foreach_set(np.tile([1, 1, 1, 1, 0, 0, 0, 1], 6).astype(np.float32))
    rgb, mask = capture_image_editor(linear, mask_image)
    assert np.allclose(rgb, 0.5, atol=1e-3)
    assert np.array_equal(mask[:, 0], [1, 1, 1]) and np.array_equal(mask[:, 1], [0, 0, 0])

    with pytest.raises(ValidationError, match="same size"):
        capture_image_editor(image, bpy.data.images.new("Small", 2, 2))


@pytest.mark.parametrize("engine", ["BLENDER_EEVEE", "BLENDER_WORKBENCH"])
def test_eevee_and_workbench_capture_depth_and_background(scene, known_scene, engine) -> None:
    """The scene's own render engine captures: the same depth as Cycles from EEVEE and Workbench, and the
    background as background (EEVEE writes the far clip distance there, not Cycles' 1e10), so the mask and the
    ControlNet's depth map cover the geometry only."""
    scene.render.engine = engine
    capture = capture_camera(scene)
    labels = label_image()
    padded = np.pad(labels, 1, mode="edge")
    interior = np.all(
        [padded[dy : dy + RENDER_HEIGHT, dx : dx + RENDER_WIDTH] == labels for dy in range(3) for dx in range(3)],
        axis=0,
    )
    expected_depth = np.array([np.inf, 10.0, 5.0, 3.0])[labels]
    assert np.allclose(capture.depth[interior], expected_depth[interior], rtol=1e-3)
    assert np.array_equal(capture.mask[interior], (labels[interior] > 0).astype(np.float32))
    control = depth_to_control_image(capture.depth)[..., 0]
    assert (control[interior & (labels == 0)] == 0).all() and (control[interior & (labels == 3)] == 1).all()
    if engine == "BLENDER_EEVEE":  # Workbench shades with the viewport colour, not the emission shader
        red = capture.color[interior & (labels == 2)]
        assert (red[:, 0] > red[:, 2] + 0.2).all()  # colour and depth are the same view


def test_eevee_masks_selected_objects_through_cryptomatte(scene, known_scene) -> None:
    """EEVEE has no Object Index pass: its Cryptomatte pass tells the selected objects apart, so inpainting
    the selection, projection and multi-view texturing work there too (exact away from anti-aliased edges)."""
    scene.render.engine = "BLENDER_EEVEE"
    known_scene["red"].name = "Cube.215"  # its hash has exponent 0: the pass stores it clamped to 1
    known_scene["blocker"].name = "Cube.181"  # and this one's 255, clamped to 254
    before = scene_state(scene)
    capture = capture_camera(scene, [known_scene["red"], known_scene["blocker"]])
    labels = label_image()
    padded = np.pad(labels, 1, mode="edge")
    interior = np.all(
        [padded[dy : dy + RENDER_HEIGHT, dx : dx + RENDER_WIDTH] == labels for dy in range(3) for dx in range(3)],
        axis=0,
    )
    expected = np.array([0, 0, 1, 2])[labels]  # background, floor (not selected), red (1st), blocker (2nd)
    assert np.array_equal(capture.labels[interior], expected[interior])
    assert np.array_equal(capture.mask[interior], (expected[interior] > 0).astype(np.float32))
    assert not scene.view_layers[0].use_pass_cryptomatte_object and scene_state(scene) == before
    scene.render.engine = "BLENDER_WORKBENCH"  # neither pass: refused, not a wrong mask
    with pytest.raises(ValidationError, match="Cycles or EEVEE"):
        capture_camera(scene, [known_scene["red"]])


def test_eevee_finds_its_background_whatever_the_clip_range(scene, known_scene) -> None:
    """With a clip range of 1e-4 to 1000 EEVEE reads its far plane back as about 683: no depth threshold could
    tell that from geometry, its Cryptomatte pass can."""
    scene.render.engine = "BLENDER_EEVEE"
    scene.camera.data.clip_start, scene.camera.data.clip_end = 1e-4, 1000.0
    capture = capture_camera(scene)
    assert np.array_equal(np.isfinite(capture.depth), capture.mask > 0)
    labels = label_image()
    padded = np.pad(labels, 1, mode="edge")
    interior = np.all(
        [padded[dy : dy + RENDER_HEIGHT, dx : dx + RENDER_WIDTH] == labels for dy in range(3) for dx in range(3)],
        axis=0,
    )
    assert np.array_equal(capture.mask[interior], (labels[interior] > 0).astype(np.float32))
