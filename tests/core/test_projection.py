"""Camera projection texturing maths, checked against closed-form pinhole geometry (no Blender)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sd_core import projection
from sd_core.errors import ValidationError
from sd_core.projection import (
    CameraModel,
    depth_test,
    dilate,
    facing_weight,
    project_points,
    project_to_texture,
    rasterize_uv,
    sample_bilinear,
    view_samples,
)

WIDTH, HEIGHT = 64, 48
FOV_X = math.radians(60.0)
FOCAL_PX = WIDTH / 2 / math.tan(FOV_X / 2)


def perspective(near: float = 0.1, far: float = 100.0) -> np.ndarray:
    """OpenGL projection for FOV_X over WIDTH x HEIGHT with square pixels."""
    sx = 1.0 / math.tan(FOV_X / 2)
    sy = sx * WIDTH / HEIGHT
    return np.array(
        [
            [sx, 0, 0, 0],
            [0, sy, 0, 0],
            [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
            [0, 0, -1, 0],
        ]
    )


def camera_at(world_matrix: np.ndarray | None = None) -> CameraModel:
    matrix = np.eye(4) if world_matrix is None else world_matrix
    return CameraModel(np.linalg.inv(matrix), perspective(), WIDTH, HEIGHT)


def expected_pixel(x: float, y: float, depth: float) -> tuple[float, float]:
    """Closed-form pinhole: camera at the origin looking down -Z, image top row first."""
    return WIDTH / 2 + FOCAL_PX * x / depth, HEIGHT / 2 - FOCAL_PX * y / depth


def test_projection_matches_pinhole_formula_and_orientation() -> None:
    points = np.array([[0.0, 0.0, -5.0], [1.0, 0.5, -4.0], [-2.0, -1.0, -8.0]])
    projected = project_points(camera_at(), points)
    for point, pixel, depth in zip(points, projected.pixel_xy, projected.depth, strict=True):
        assert pixel == pytest.approx(expected_pixel(point[0], point[1], -point[2]))
        assert depth == pytest.approx(-point[2])
    # +X is right, +Y is up, so it lands in the top rows.
    assert projected.pixel_xy[1, 0] > WIDTH / 2 and projected.pixel_xy[1, 1] < HEIGHT / 2
    assert projected.in_frame.all()


def test_out_of_frame_behind_and_beyond_clip() -> None:
    points = np.array([[0, 0, 5.0], [0, 0, -0.01], [0, 0, -500.0], [100.0, 0, -1.0]])
    assert not project_points(camera_at(), points).in_frame.any()


def test_moved_and_rotated_camera() -> None:
    # Camera at (10, 0, 0) turned to look down -X (rotate +90 degrees about Y).
    world = np.array([[0, 0, 1, 10.0], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]])
    projected = project_points(camera_at(world), np.array([[3.0, 0.0, 0.0]]))
    assert projected.pixel_xy[0] == pytest.approx([WIDTH / 2, HEIGHT / 2])
    assert projected.depth[0] == pytest.approx(7.0)


def test_facing_weight_is_cosine_and_zero_when_turned_away() -> None:
    points = np.tile([0.0, 0.0, -5.0], (4, 1))
    angle = math.radians(60)
    normals = np.array([[0, 0, 1.0], [math.sin(angle), 0, math.cos(angle)], [1.0, 0, 0], [0, 0, -1.0]])
    assert facing_weight(camera_at(), points, normals) == pytest.approx([1.0, 0.5, 0.0, 0.0])


def test_depth_test_occlusion_background_and_slope() -> None:
    camera = camera_at()
    depth_map = np.full((HEIGHT, WIDTH), 5.0, dtype=np.float32)
    depth_map[:, WIDTH // 2 :] = 1e10
    left = [-0.5, 0.0]
    points = np.array([[*left, -5.0], [*left, -4.0], [*left, -5.5], [0.5, 0.0, -30.0]])
    projected = project_points(camera, points)
    head_on = np.ones(len(points))
    assert depth_test(camera, projected, depth_map, head_on).tolist() == [True, True, False, True]
    # A grazing surface may differ from its pixel centre's depth by ~footprint * tan: allowed.
    footprint = 5.0 * 2 / (camera.projection_matrix[0, 0] * WIDTH)
    grazing = project_points(camera, np.array([[*left, -5.0 - 3 * footprint]]))
    assert not depth_test(camera, grazing, depth_map, np.array([1.0]))[0]
    assert depth_test(camera, grazing, depth_map, np.array([0.1]))[0]


def test_bilinear_sampling_reproduces_a_linear_ramp() -> None:
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    image = np.stack([2 * columns + 3 * rows, columns - rows], axis=2)
    pixel_xy = np.array([[0.5, 0.5], [10.25, 7.75], [40.9, 30.1]])
    expected = [[2 * (x - 0.5) + 3 * (y - 0.5), (x - 0.5) - (y - 0.5)] for x, y in pixel_xy]
    assert np.allclose(sample_bilinear(image, pixel_xy), expected, atol=1e-4)


def test_rasteriser_covers_the_square_once_top_row_first() -> None:
    quad = np.array([[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 1], [0, 1]]], dtype=np.float64)
    texels = rasterize_uv(quad, 16, 8)
    assert len(texels.texel_index) == 16 * 8 and texels.island_mask().all()
    uv = texels.interpolate(quad)
    rows, columns = np.divmod(texels.texel_index, 16)
    assert np.allclose(uv[:, 0], (columns + 0.5) / 16)
    assert np.allclose(uv[:, 1], 1 - (rows + 0.5) / 8)  # row 0 is v = 1


def test_rasteriser_batches_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    triangles = rng.uniform(-0.1, 1.1, size=(50, 3, 2))
    whole = rasterize_uv(triangles, 40, 30)
    monkeypatch.setattr(projection, "RASTER_CHUNK_TEXELS", 7)
    batched = rasterize_uv(triangles, 40, 30)
    assert np.array_equal(whole.texel_index, batched.texel_index)
    assert np.array_equal(whole.triangle, batched.triangle)
    assert np.allclose(whole.barycentric, batched.barycentric)
    assert (whole.barycentric >= -1e-9).all() and np.allclose(whole.barycentric.sum(axis=1), 1.0)


def brute_force_rasterisation(triangles: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Every texel centre against every triangle, with the rasteriser's own inside test: (texel, first triangle)."""
    rows, columns = np.divmod(np.arange(width * height), width)
    covering = np.full(width * height, -1)
    for index in range(len(triangles) - 1, -1, -1):  # the first covering triangle written last
        corners = np.stack([triangles[index, :, 0] * width - 0.5, (1 - triangles[index, :, 1]) * height - 0.5], 1)
        a, b, c = (np.repeat(corners[[k]], width * height, axis=0) for k in range(3))
        area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        if abs(area[0]) <= 1e-12:
            continue
        weights = projection._barycentric(a, b, c, area, columns.astype(np.float64), rows.astype(np.float64))
        covering[(weights >= -projection.INSIDE_TOLERANCE).all(axis=1)] = index
    texels = np.flatnonzero(covering >= 0)
    return texels, covering[texels]


@pytest.mark.parametrize("kind", ["random", "grid", "slivers"])
def test_rasteriser_finds_exactly_the_texels_a_brute_force_test_finds(kind: str) -> None:
    """Row spans only skip work: the same texels, each with the first triangle covering it, whatever the shape
    (random overlapping triangles, a UV grid whose edges run through texel centres, long thin slivers)."""
    rng = np.random.default_rng(1)
    if kind == "random":
        triangles = rng.uniform(-0.2, 1.2, size=(60, 3, 2))
    elif kind == "grid":  # 7 x 3 quads of 4 x 4 texels on a 32 x 16 texture, corners and edges on texel centres
        u, v = np.meshgrid((4 * np.arange(8) + 0.5) / 32, 1 - (4 * np.arange(4) + 0.5) / 16, indexing="ij")
        corners = np.stack([u, v], axis=-1)
        quads = [
            (corners[i, j], corners[i + 1, j], corners[i + 1, j + 1], corners[i, j + 1])
            for i in range(7)
            for j in range(3)
        ]
        triangles = np.array([tri for q in quads for tri in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))])
    else:
        start = rng.uniform(0, 1, size=(40, 1, 2))
        triangles = np.concatenate([start, start + rng.uniform(-0.8, 0.8, (40, 1, 2)), start + 0.01], axis=1)
    width, height = (32, 16) if kind == "grid" else (37, 29)
    texels = rasterize_uv(triangles, width, height)
    expected_texels, expected_triangles = brute_force_rasterisation(triangles, width, height)
    assert len(expected_texels) > 0
    assert np.array_equal(texels.texel_index, expected_texels)
    assert np.array_equal(texels.triangle, expected_triangles)


def test_dilate_grows_one_ring_per_iteration() -> None:
    values = np.zeros((7, 7, 1), dtype=np.float32)
    known = np.zeros((7, 7), dtype=bool)
    values[3, 3], known[3, 3] = 5.0, True
    grown, grown_known = dilate(values, known, 1)
    assert grown_known.sum() == 9 and np.all(grown[2:5, 2:5] == 5.0)
    _, twice = dilate(values, known, 2)
    assert twice.sum() == 25


def test_dilate_fills_each_ring_with_the_mean_of_its_known_neighbours() -> None:
    """Against the whole-texture computation (sum of the 8 shifted neighbours), bit for bit."""
    rng = np.random.default_rng(5)
    values = rng.standard_normal((23, 31, 3)).astype(np.float32)
    known = rng.random((23, 31)) < 0.2
    expected, expected_known = values.copy(), known.copy()
    for _ in range(3):
        padded = np.pad(expected * expected_known[..., None], ((1, 1), (1, 1), (0, 0)))
        padded_known = np.pad(expected_known, 1).astype(np.float32)
        total, count = np.zeros_like(expected), np.zeros((23, 31), np.float32)
        for dy, dx in [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]:
            total += padded[dy : dy + 23, dx : dx + 31]
            count += padded_known[dy : dy + 23, dx : dx + 31]
        grow = ~expected_known & (count > 0)
        expected[grow] = total[grow] / count[grow, None]
        expected_known |= grow
    got, got_known = dilate(values, known, 3)
    assert np.array_equal(got_known, expected_known) and np.array_equal(got, expected)


def tilted_quad(angle_degrees: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 4x4 quad at depth 6 tilted about X, centred in view: (uv, positions, normals, plane normal)."""
    tilt = math.radians(angle_degrees)
    axis_u = np.array([1.0, 0.0, 0.0])
    axis_v = np.array([0.0, math.cos(tilt), -math.sin(tilt)])
    centre = np.array([0.0, 0.0, -6.0])
    uv_corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    positions = centre + 4 * ((uv_corners[:, :1] - 0.5) * axis_u + (uv_corners[:, 1:] - 0.5) * axis_v)
    normal = np.cross(axis_u, axis_v)
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    return uv_corners[triangles], positions[triangles], np.broadcast_to(normal, (2, 3, 3)).copy(), normal


def analytic_depth_map(camera: CameraModel, plane_point: np.ndarray, plane_normal: np.ndarray) -> np.ndarray:
    """Planar depth of an infinite plane through every pixel centre (ray-plane intersection)."""
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    rays = np.stack([(columns - WIDTH / 2) / FOCAL_PX, -(rows - HEIGHT / 2) / FOCAL_PX, -np.ones_like(rows)], axis=2)
    distance = (plane_point @ plane_normal) / (rays @ plane_normal)
    return np.where(distance > 0, distance, 1e10).astype(np.float32)


def test_texel_lookup_is_perspective_correct() -> None:
    """Each texel samples the image exactly where its surface point projects, even on a steep plane."""
    uv, positions, normals, normal = tilted_quad(50.0)
    camera = camera_at()
    depth_map = analytic_depth_map(camera, positions[0, 0], normal)
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    image = np.stack([columns / WIDTH, rows / HEIGHT, np.zeros_like(rows)], axis=2)

    result = project_to_texture(camera, image, depth_map, uv, positions, normals, 32, 32)

    seen = result.weight > 0
    assert seen.all() and result.islands.all()
    texel_rows, texel_columns = np.nonzero(seen)
    u, v = (texel_columns + 0.5) / 32, 1 - (texel_rows + 0.5) / 32
    corners = positions[0]  # uv (0,0), (1,0), (1,1) of the first triangle span the plane
    world = corners[0] + u[:, None] * (corners[1] - corners[0]) + v[:, None] * (corners[2] - corners[1])
    expected = np.array([expected_pixel(x, y, -z) for x, y, z in world])
    got_x = result.color[seen][:, 0] * WIDTH + 0.5
    got_y = result.color[seen][:, 1] * HEIGHT + 0.5
    assert np.abs(got_x - expected[:, 0]).max() < 1e-3
    assert np.abs(got_y - expected[:, 1]).max() < 1e-3
    to_camera = -world / np.linalg.norm(world, axis=1, keepdims=True)
    assert np.allclose(result.weight[seen], to_camera @ normal, atol=1e-5)


def test_occluded_and_back_facing_texels_get_nothing() -> None:
    uv, positions, normals, normal = tilted_quad(0.0)
    camera = camera_at()
    depth_map = analytic_depth_map(camera, positions[0, 0], normal)
    depth_map[:, : WIDTH // 2] = 3.0  # an occluder covers the left half of the view
    image = np.ones((HEIGHT, WIDTH, 3), dtype=np.float32)

    result = project_to_texture(camera, image, depth_map, uv, positions, normals, 32, 32)
    assert not result.weight[:, :15].any() and result.weight[:, 17:].all()

    flipped = project_to_texture(camera, image, depth_map, uv, positions, -normals, 32, 32)
    assert not flipped.weight.any()


def test_image_of_another_size_is_scaled_to_the_camera_frame() -> None:
    uv, positions, normals, normal = tilted_quad(30.0)
    camera = camera_at()
    depth_map = analytic_depth_map(camera, positions[0, 0], normal)
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    small = np.stack([columns / WIDTH, rows / HEIGHT, np.zeros_like(rows)], axis=2)
    rows2, columns2 = np.mgrid[0 : 2 * HEIGHT, 0 : 2 * WIDTH].astype(np.float32)
    large = np.stack([(columns2 - 0.5) / (2 * WIDTH), (rows2 - 0.5) / (2 * HEIGHT), np.zeros_like(rows2)], axis=2)
    from_small = project_to_texture(camera, small, depth_map, uv, positions, normals, 16, 16)
    from_large = project_to_texture(camera, large, depth_map, uv, positions, normals, 16, 16)
    inner = np.s_[2:-2, 2:-2]
    assert np.allclose(from_small.color[inner], from_large.color[inner], atol=2e-3)


def test_rgba_pads_islands_but_keeps_hidden_texels_transparent() -> None:
    weight = np.zeros((8, 8), dtype=np.float32)
    weight[2:6, 2:4] = 1.0
    islands = np.zeros((8, 8), dtype=bool)
    islands[2:6, 2:6] = True  # right half of the island is hidden
    color = np.zeros((8, 8, 3), dtype=np.float32)
    color[weight > 0] = [1.0, 0.5, 0.25]
    rgba = projection.TextureProjection(color, weight, islands).rgba(padding=2)
    assert np.all(rgba[2:6, 4:6, 3] == 0.0)  # hidden, inside the island: untouched
    assert np.all(rgba[2:6, 1, 3] > 0.0) and np.all(rgba[2:6, 0, 3] > 0.0)  # padded past the edge
    assert np.allclose(rgba[2:6, 4, :3], [1.0, 0.5, 0.25])  # colour bled under the hidden edge


def test_bad_shapes_are_rejected() -> None:
    camera = camera_at()
    with pytest.raises(ValidationError):
        project_points(camera, np.zeros((3, 2)))
    with pytest.raises(ValidationError):
        view_samples(camera, np.zeros((2, 2)), np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValidationError):
        rasterize_uv(np.zeros((1, 3, 3)), 8, 8)
    with pytest.raises(ValidationError):
        CameraModel(np.eye(3), perspective(), WIDTH, HEIGHT)


def test_projecting_in_parallel_parts_gives_the_same_texture(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-texel work split over cores (``in_parallel_parts``, rasteriser batches) computes the same values."""
    uv, positions, normals, normal = tilted_quad(30.0)
    camera = camera_at()
    depth_map = analytic_depth_map(camera, positions[0, 0], normal)
    depth_map[:, : WIDTH // 3] = 3.0  # occluded, seen and (below) turned-away texels alike
    image = np.random.default_rng(2).random((HEIGHT, WIDTH, 3), dtype=np.float32)
    monkeypatch.setattr(projection, "_cores", lambda: 1)
    one = project_to_texture(camera, image, depth_map, uv, positions, normals, 48, 40)
    monkeypatch.setattr(projection, "_cores", lambda: 4)
    monkeypatch.setattr(projection, "PARALLEL_MIN_TEXELS", 50)
    parts = []
    split = projection.in_parallel_parts
    monkeypatch.setattr(projection, "in_parallel_parts", lambda work, count: parts.append(count) or split(work, count))
    several = project_to_texture(camera, image, depth_map, uv, positions, normals, 48, 40)
    assert parts and min(parts) >= 4 * 50  # the texels really were split four ways
    for name in ("color", "weight", "islands"):
        assert np.array_equal(getattr(one, name), getattr(several, name))
    assert 0 < (one.weight > 0).mean() < 1


def test_a_mesh_outside_the_uv_square_projects_to_an_empty_texture() -> None:
    uv, positions, normals, normal = tilted_quad(0.0)
    camera = camera_at()
    depth_map = analytic_depth_map(camera, positions[0, 0], normal)
    result = project_to_texture(
        camera, np.ones((HEIGHT, WIDTH, 3), np.float32), depth_map, uv + 5, positions, normals, 8, 8
    )
    assert not result.islands.any() and not result.weight.any()
