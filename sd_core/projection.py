"""Camera projection texturing, Blender-free: put a generated picture back onto the surfaces it shows.

The picture was generated from one camera view, so a surface point gets the colour of the pixel it
projects to - but only where that camera really saw it. Three tests decide that, per point:

* in frame: it projects inside the image and between the clip planes;
* not occluded: nothing in the rendered depth map is nearer than the point (Dream Textures skips this,
  so hidden faces get foreground colours);
* facing: the cosine between its normal and the direction to the camera; back-facing is 0.

The product is a per-view *weight*; single-view baking keeps texels with weight > 0, multi-view fusion
can later blend several views' samples by their weights.

Texture space work happens per texel, not per vertex: every UV triangle is rasterised, and each texel's
world position and normal are interpolated with its barycentric coordinates. The UV-to-world map is
affine inside a triangle, so this is exact; only then is the position projected through the camera,
which makes the lookup perspective-correct (per-vertex UVs warp large faces).

Conventions: cameras follow Blender/OpenGL (camera looks down -Z, +Y up, OpenGL clip space); images
are top row first; pixel (column i, row j) covers [i, i + 1) x [j, j + 1), so its centre is at
(i + 0.5, j + 0.5). Texture arrays are top row first too: UV v = 1 is row 0.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from sd_core.errors import ValidationError

MAX_SLOPE = 20.0
"""Cap on tan(view angle) for the slope term of the depth tolerance (about 87 degrees)."""

INSIDE_TOLERANCE = 1e-9
"""A texel centre is inside a UV triangle where no barycentric weight is below minus this (edges included)."""

SPAN_MARGIN = 1e-6
"""Texels by which a triangle's row span is widened against rounding; its weights then decide."""

RASTER_CHUNK_TEXELS = 1 << 22
"""Candidate texels tested per batch: bounds memory of the vectorised rasteriser (~4M x ~80 bytes)."""

PARALLEL_MIN_TEXELS = 1 << 17
"""Texels a thread takes at least: below this, handing a part to another core costs more than it saves."""

Item = TypeVar("Item")
Part = TypeVar("Part")


def in_parallel_parts(work: Callable[[slice], Part], count: int) -> list[Part]:
    """``work`` over ``count`` items cut into contiguous slices, one per core, run at once; results in order.

    numpy and torch release the GIL in their array work, so per-texel maths scales with the cores (1.7x on two
    cores for a 1M-texel projection); the parts are the same computations on the same values, so the results
    are identical to one pass.
    """
    parts = max(1, min(_cores(), count // PARALLEL_MIN_TEXELS))
    step = max(1, -(-count // parts))
    slices = [slice(start, min(start + step, count)) for start in range(0, count, step)]
    return map_in_parallel(work, slices or [slice(0, 0)])


def map_in_parallel(work: Callable[[Item], Part], items: Sequence[Item]) -> list[Part]:
    """``work`` on each item, on the cores' thread pool when there are several; results in order. For array work
    that releases the GIL (numpy, torch) and never calls into Blender."""
    return list(_thread_pool().map(work, items)) if len(items) > 1 else [work(item) for item in items]


def _cores() -> int:
    return os.cpu_count() or 1


@functools.cache
def _thread_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_cores(), thread_name_prefix="sd_core-projection")


@dataclass(frozen=True)
class CameraModel:
    """A pinhole or orthographic camera as plain matrices: what projection needs, nothing Blender-specific.

    ``view_matrix`` maps world to camera space (the inverse of the camera's world matrix, scale-free);
    ``projection_matrix`` maps camera space to OpenGL clip space for an image ``width`` x ``height``.
    """

    view_matrix: np.ndarray
    projection_matrix: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("view_matrix", "projection_matrix"):
            matrix = np.asarray(getattr(self, name), dtype=np.float64)
            if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
                raise ValidationError(f"The camera's {name.replace('_', ' ')} must be a finite 4x4 matrix.")
            object.__setattr__(self, name, matrix)
        if self.width < 1 or self.height < 1:
            raise ValidationError(f"The camera image size must be positive, got {self.width}x{self.height}.")

    @property
    def is_orthographic(self) -> bool:
        """OpenGL orthographic matrices have a last row of (0, 0, 0, 1); perspective ones (0, 0, -1, 0)."""
        return bool(self.projection_matrix[3, 3] == 1.0 and self.projection_matrix[3, 2] == 0.0)

    @property
    def camera_to_world(self) -> np.ndarray:
        """The camera's world matrix (its position is the last column)."""
        return np.linalg.inv(self.view_matrix)

    def pixel_footprint(self, depth: np.ndarray) -> np.ndarray:
        """World-space size of one pixel at the given planar depth (the larger of its two sides)."""
        per_unit = max(
            2.0 / (self.projection_matrix[0, 0] * self.width), 2.0 / (self.projection_matrix[1, 1] * self.height)
        )
        if self.is_orthographic:
            return np.full_like(depth, per_unit)
        return depth * per_unit


@dataclass(frozen=True)
class ProjectedPoints:
    """Where world points land in a camera image.

    ``pixel_xy`` (N, 2): continuous pixel coordinates, top-left origin; ``depth`` (N,): planar depth along
    the view axis (what Cycles' Z pass stores); ``in_frame`` (N,): inside the image and the clip range.
    """

    pixel_xy: np.ndarray
    depth: np.ndarray
    in_frame: np.ndarray


def _as_points(points: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValidationError(f"{what} must be an (N, 3) array, got shape {array.shape}.")
    return array


def project_points(camera: CameraModel, points: np.ndarray) -> ProjectedPoints:
    """Project (N, 3) world points through the camera into its image."""
    world = _as_points(points, "Points")
    homogeneous = np.concatenate([world, np.ones((len(world), 1))], axis=1)
    camera_space = homogeneous @ camera.view_matrix.T
    clip = camera_space @ camera.projection_matrix.T
    w = clip[:, 3]
    in_front = w > 1e-12
    safe_w = np.where(in_front, w, 1.0)
    ndc = clip[:, :3] / safe_w[:, None]
    pixel_xy = np.stack(
        [(ndc[:, 0] + 1.0) * 0.5 * camera.width, (1.0 - ndc[:, 1]) * 0.5 * camera.height],
        axis=1,
    )
    in_frame = (
        in_front
        & (np.abs(ndc[:, 2]) <= 1.0)
        & (pixel_xy[:, 0] >= 0.0)
        & (pixel_xy[:, 0] < camera.width)
        & (pixel_xy[:, 1] >= 0.0)
        & (pixel_xy[:, 1] < camera.height)
    )
    return ProjectedPoints(pixel_xy=pixel_xy, depth=-camera_space[:, 2], in_frame=in_frame)


def facing_weight(camera: CameraModel, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Cosine between each unit normal and the direction to the camera; 0 for back-facing points."""
    world = _as_points(points, "Points")
    unit_normals = _as_points(normals, "Normals")
    camera_to_world = camera.camera_to_world
    if camera.is_orthographic:
        to_camera = np.broadcast_to(camera_to_world[:3, 2], world.shape)
    else:
        to_camera = camera_to_world[:3, 3] - world
    length = np.linalg.norm(to_camera, axis=1, keepdims=True)
    cosine = np.einsum("ij,ij->i", unit_normals, to_camera / np.maximum(length, 1e-12))
    return np.clip(cosine, 0.0, 1.0)


def depth_test(
    camera: CameraModel,
    projected: ProjectedPoints,
    depth_map: np.ndarray,
    facing: np.ndarray,
    *,
    relative_tolerance: float = 0.005,
) -> np.ndarray:
    """True where nothing in ``depth_map`` (H, W planar depth, background >= 1e9 or inf) is in front of the point.

    The point is compared with the depth of the pixel it falls in. That depth belongs to the pixel
    centre, up to ~0.7 px away, so on a slanted surface the two differ by about
    footprint x tan(view angle) - the slope term, as in shadow mapping. ``relative_tolerance`` covers
    float error and tessellation differences (the renderer may see a subdivided surface).
    """
    if depth_map.shape != (camera.height, camera.width):
        raise ValidationError(
            f"The depth map is {depth_map.shape[1]}x{depth_map.shape[0]} but the camera renders "
            f"{camera.width}x{camera.height}."
        )
    columns = np.clip(np.floor(projected.pixel_xy[:, 0]).astype(np.int64), 0, camera.width - 1)
    rows = np.clip(np.floor(projected.pixel_xy[:, 1]).astype(np.int64), 0, camera.height - 1)
    rendered = depth_map[rows, columns].astype(np.float64)
    cosine = np.maximum(facing, 1.0 / np.hypot(1.0, MAX_SLOPE))
    slope = np.minimum(np.sqrt(1.0 - cosine**2) / cosine, MAX_SLOPE)
    tolerance = relative_tolerance * projected.depth + camera.pixel_footprint(projected.depth) * slope
    return projected.depth <= np.nan_to_num(rendered, nan=np.inf, posinf=np.inf) + tolerance


@dataclass(frozen=True)
class ViewSamples:
    """One camera's view of a set of surface points: where each lands and how much the view is trusted.

    ``weight`` is the facing cosine where the point is in frame, not occluded and front-facing, else 0.
    Multi-view fusion blends views by these weights.
    """

    pixel_xy: np.ndarray
    weight: np.ndarray


def view_samples(
    camera: CameraModel,
    depth_map: np.ndarray,
    points: np.ndarray,
    normals: np.ndarray,
    *,
    relative_tolerance: float = 0.005,
) -> ViewSamples:
    """Project points into one view and weight them by frame, occlusion and facing tests."""
    projected = project_points(camera, points)
    facing = facing_weight(camera, points, normals)
    visible = projected.in_frame & (facing > 0.0)
    visible &= depth_test(camera, projected, depth_map, facing, relative_tolerance=relative_tolerance)
    return ViewSamples(pixel_xy=projected.pixel_xy, weight=np.where(visible, facing, 0.0).astype(np.float32))


def sample_bilinear(image: np.ndarray, pixel_xy: np.ndarray) -> np.ndarray:
    """Bilinear lookup of an (H, W, C) image at continuous pixel coordinates (N, 2); edges clamp.

    Through torch's ``grid_sample`` (border padding is the same clamp), several times faster on the CPU than
    numpy gathers; float64 keeps coordinates and weights as exact as the numpy arithmetic was.
    """
    height, width = image.shape[:2]
    layers = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].double()
    grid = torch.from_numpy(np.asarray(pixel_xy, dtype=np.float64) / [width / 2.0, height / 2.0] - 1.0)[None, None]
    samples = F.grid_sample(layers, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return samples[0, :, 0].T.float().numpy()


@dataclass(frozen=True)
class TexelSamples:
    """Texel centres covered by UV triangles, for a ``width`` x ``height`` texture (top row first).

    ``texel_index`` is the flat row-major index; ``triangle`` the covering triangle; ``barycentric`` (M, 3)
    its weights there. A texel covered by several triangles (overlapping UVs) belongs to the first.
    """

    texel_index: np.ndarray
    triangle: np.ndarray
    barycentric: np.ndarray
    width: int
    height: int

    def island_mask(self) -> np.ndarray:
        """(H, W) bool: texels whose centre lies inside some UV triangle."""
        mask = np.zeros(self.height * self.width, dtype=bool)
        mask[self.texel_index] = True
        return mask.reshape(self.height, self.width)

    def interpolate(self, corner_values: np.ndarray, texels: slice = slice(None)) -> np.ndarray:
        """Per-corner values (T, 3, C) to per-texel values (M, C), or those of ``texels``, by barycentric
        interpolation."""
        return np.einsum("mk,mkc->mc", self.barycentric[texels], corner_values[self.triangle[texels]])


def rasterize_uv(uv_triangles: np.ndarray, width: int, height: int) -> TexelSamples:
    """Find every texel centre inside the (T, 3, 2) UV triangles, vectorised in batches of triangle rows that
    run on every core."""
    uv = np.asarray(uv_triangles, dtype=np.float64)
    if uv.ndim != 3 or uv.shape[1:] != (3, 2):
        raise ValidationError(f"UV triangles must be a (T, 3, 2) array, got shape {uv.shape}.")
    if width < 1 or height < 1:
        raise ValidationError(f"The texture size must be positive, got {width}x{height}.")
    # Texel space: texel (column i, row j) has its centre at integer (i, j); v = 1 is row 0.
    corners = np.stack([uv[..., 0] * width - 0.5, (1.0 - uv[..., 1]) * height - 0.5], axis=-1)
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    doubled_area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    column_min = np.clip(np.ceil(corners[..., 0].min(axis=1)), 0, width - 1).astype(np.int64)
    column_max = np.clip(np.floor(corners[..., 0].max(axis=1)), 0, width - 1).astype(np.int64)
    row_min = np.clip(np.ceil(corners[..., 1].min(axis=1)), 0, height - 1).astype(np.int64)
    row_max = np.clip(np.floor(corners[..., 1].max(axis=1)), 0, height - 1).astype(np.int64)
    box_width = column_max - column_min + 1
    box_height = row_max - row_min + 1
    usable = (np.abs(doubled_area) > 1e-12) & (corners[..., 0].max(axis=1) >= 0) & (corners[..., 1].max(axis=1) >= 0)
    usable &= (corners[..., 0].min(axis=1) <= width - 1) & (corners[..., 1].min(axis=1) <= height - 1)
    usable &= (box_width > 0) & (box_height > 0)
    triangles = np.flatnonzero(usable)

    # One work unit = one row of one triangle, and only the columns its edges bound there (not its whole box):
    # a triangle spanning the texture is batched too, and a slanted one costs its own texels, not its box's.
    row_triangle = np.repeat(triangles, box_height[triangles])
    row_offset = np.arange(len(row_triangle)) - np.repeat(
        np.cumsum(box_height[triangles]) - box_height[triangles], box_height[triangles]
    )
    row_y = (row_min[row_triangle] + row_offset).astype(np.float64)
    first, last = _row_spans(a, b, c, doubled_area, row_triangle, row_y)
    first = np.maximum(first, column_min[row_triangle])
    last = np.minimum(last, column_max[row_triangle])
    spanned = last >= first
    row_triangle, row_y, first, last = row_triangle[spanned], row_y[spanned], first[spanned], last[spanned]
    span_width = last - first + 1
    row_cost = np.cumsum(span_width)

    # Batches of whole rows, each at most RASTER_CHUNK_TEXELS candidates and about a core's share of them.
    candidates = int(row_cost[-1]) if len(row_cost) else 0
    batch_texels = min(RASTER_CHUNK_TEXELS, max(PARALLEL_MIN_TEXELS, -(-candidates // _cores())))
    batches = []
    start = 0
    while start < len(row_triangle):
        before = row_cost[start - 1] if start else 0
        stop = max(int(np.searchsorted(row_cost, before + batch_texels, side="right")), start + 1)
        batches.append(slice(start, stop))
        start = stop

    def rasterise(rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        counts = span_width[rows]
        triangle = np.repeat(row_triangle[rows], counts)
        x = np.repeat(first[rows], counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        y = np.repeat(row_y[rows], counts)
        weights = _barycentric(a[triangle], b[triangle], c[triangle], doubled_area[triangle], x, y)
        inside = (weights >= -INSIDE_TOLERANCE).all(axis=1)  # the spans' rounding margin is decided here
        return y[inside].astype(np.int64) * width + x[inside], triangle[inside], weights[inside]

    found = map_in_parallel(rasterise, batches)
    if not found:
        return TexelSamples(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), width, height)
    texel_index, first_found = np.unique(np.concatenate([part[0] for part in found]), return_index=True)
    return TexelSamples(
        texel_index=texel_index,
        triangle=np.concatenate([part[1] for part in found])[first_found],
        barycentric=np.concatenate([part[2] for part in found])[first_found],
        width=width,
        height=height,
    )


def _row_spans(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, doubled_area: np.ndarray, triangle: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """First and last column (int64) a texel row ``y`` of each ``triangle`` may cover, a hair wide.

    Along a row each barycentric weight is affine in x, so "weight >= -tolerance" bounds x on one side (or,
    for an edge parallel to the row, keeps or drops the whole row). The bounds are widened by
    ``SPAN_MARGIN`` so that a texel the weights would keep is never dropped by the bounds' own rounding.
    """
    lowest = np.full(len(triangle), -np.inf)
    highest = np.full(len(triangle), np.inf)
    sign = np.sign(doubled_area[triangle])
    slack = INSIDE_TOLERANCE * np.abs(doubled_area[triangle])
    for p, q in ((b, c), (c, a), (a, b)):  # the edges opposite a, b and c, as in ``_barycentric``
        p, q = p[triangle], q[triangle]
        # sign * edge(p, q) at (x, y) + slack = slope * x + offset; the texel may be inside where it is >= 0
        slope = -sign * (q[:, 1] - p[:, 1])
        offset = sign * ((q[:, 0] - p[:, 0]) * (y - p[:, 1]) + (q[:, 1] - p[:, 1]) * p[:, 0]) + slack
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = -offset / slope
        lowest = np.where(slope > 0, np.maximum(lowest, bound), lowest)
        highest = np.where(slope < 0, np.minimum(highest, bound), highest)
        parallel_outside = (slope == 0) & (offset < -SPAN_MARGIN * np.abs(doubled_area[triangle]))
        highest = np.where(parallel_outside, -np.inf, highest)
    first = np.ceil(np.clip(lowest - SPAN_MARGIN, -1, 1 << 40)).astype(np.int64)
    last = np.floor(np.clip(highest + SPAN_MARGIN, -(1 << 40), 1 << 40)).astype(np.int64)
    return first, last


def _barycentric(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, doubled_area: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """(M, 3) barycentric weights of points (x, y) in triangles abc, from signed sub-triangle areas."""

    def edge(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        return (q[:, 0] - p[:, 0]) * (y - p[:, 1]) - (q[:, 1] - p[:, 1]) * (x - p[:, 0])

    return np.stack([edge(b, c), edge(c, a), edge(a, b)], axis=1) / doubled_area[:, None]


def dilate(values: np.ndarray, known: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Grow ``values`` (H, W, C) from ``known`` (H, W) texels into unknown neighbours, one ring per iteration.

    Each newly filled texel takes the mean of its known 8-neighbours. Used for padding past UV island
    edges (so bilinear/mip filtering at a seam never reads unfilled texels) and for bleeding colour under
    transparent texels (so filtering at an occlusion edge does not pull in black). Only the ring's texels
    are computed (gathered by index), not the whole texture: at 1024² about 10x less work.
    """
    filled = np.array(values, dtype=np.float32, copy=True)
    known_now = np.array(known, dtype=bool, copy=True)
    height, width = known_now.shape
    for _ in range(iterations):
        padded_known = np.pad(known_now, 1)
        near_known = np.zeros_like(known_now)
        for dy, dx in _NEIGHBOURS:
            near_known |= padded_known[dy : dy + height, dx : dx + width]
        rows, columns = np.nonzero(near_known & ~known_now)
        if rows.size == 0:
            break
        padded_values = np.pad(filled, ((1, 1), (1, 1), (0, 0)))
        total = np.zeros((rows.size, filled.shape[2]), dtype=np.float32)
        count = np.zeros(rows.size, dtype=np.float32)
        for dy, dx in _NEIGHBOURS:  # the same order of additions as a whole-texture sum: the same bits
            neighbour_known = padded_known[rows + dy, columns + dx]
            total += padded_values[rows + dy, columns + dx] * neighbour_known[:, None]
            count += neighbour_known
        filled[rows, columns] = total / count[:, None]
        known_now[rows, columns] = True
    return filled, known_now


# Offsets of the 8 neighbours in a texture padded by one texel.
_NEIGHBOURS = tuple((dy, dx) for dy in (0, 1, 2) for dx in (0, 1, 2) if (dy, dx) != (1, 1))


@dataclass(frozen=True)
class TextureProjection:
    """A picture projected into a UV texture (top row first).

    ``color`` (H, W, 3) is straight colour, valid where ``weight`` > 0 (black elsewhere); ``weight`` (H, W)
    the view weight (0: not seen); ``islands`` (H, W) texels inside UV triangles.
    """

    color: np.ndarray
    weight: np.ndarray
    islands: np.ndarray

    def rgba(self, *, min_facing: float = 0.0, padding: int = 4) -> np.ndarray:
        """(H, W, 4) texture to layer over the old surface: alpha 1 where seen, padded past island edges.

        Colour bleeds ``padding`` texels around what was seen, under transparent texels too, so texture
        filtering at an occlusion edge never pulls in black. Alpha grows only into texels outside every
        island, so hidden texels inside an island stay transparent (the old surface shows there) while
        seams get ``padding`` texels of margin.
        """
        seen = self.weight > min_facing
        color, _ = dilate(self.color, seen, padding)
        alpha, _ = dilate(seen[..., None].astype(np.float32), self.islands, padding)
        return np.concatenate([color, alpha], axis=2)


def texel_surface(
    uv_triangles: np.ndarray, corner_positions: np.ndarray, corner_normals: np.ndarray, width: int, height: int
) -> tuple[TexelSamples, np.ndarray, np.ndarray]:
    """Rasterise the UV triangles and give every covered texel its world position and unit normal (M, 3).

    Shared by single-view projection and multi-view fusion, so both see exactly the same surface points.
    """
    triangle_count = len(uv_triangles)
    for name, array in (("corner positions", corner_positions), ("corner normals", corner_normals)):
        if np.shape(array) != (triangle_count, 3, 3):
            raise ValidationError(f"Mesh {name} must be ({triangle_count}, 3, 3), got {np.shape(array)}.")
    texels = rasterize_uv(uv_triangles, width, height)
    positions = np.asarray(corner_positions, dtype=np.float64)
    corner_normals = np.asarray(corner_normals, dtype=np.float64)

    def surface(part: slice) -> tuple[np.ndarray, np.ndarray]:
        normals = texels.interpolate(corner_normals, part)
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        return texels.interpolate(positions, part), normals

    parts = in_parallel_parts(surface, len(texels.texel_index))
    return texels, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def project_to_texture(
    camera: CameraModel,
    image: np.ndarray,
    depth_map: np.ndarray,
    uv_triangles: np.ndarray,
    corner_positions: np.ndarray,
    corner_normals: np.ndarray,
    width: int,
    height: int,
    *,
    relative_tolerance: float = 0.005,
) -> TextureProjection:
    """Project ``image`` (h, w, 3), generated for ``camera``, into a ``width`` x ``height`` UV texture.

    Mesh data come per triangle corner, in world space: ``uv_triangles`` (T, 3, 2),
    ``corner_positions`` (T, 3, 3), ``corner_normals`` (T, 3, 3). The image may have another size than
    the camera render (a diffusion model's output size) as long as it covers the same frame: pixel
    positions are scaled; ``depth_map`` must be the camera render's size.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValidationError(f"The image to project must be (height, width, 3), got shape {image.shape}.")
    texels, points, normals = texel_surface(uv_triangles, corner_positions, corner_normals, width, height)
    scale = np.array([image.shape[1] / camera.width, image.shape[0] / camera.height])
    picture = np.asarray(image, dtype=np.float32)

    def project(part: slice) -> tuple[np.ndarray, np.ndarray]:
        samples = view_samples(camera, depth_map, points[part], normals[part], relative_tolerance=relative_tolerance)
        return sample_bilinear(picture, samples.pixel_xy * scale), samples.weight

    parts = in_parallel_parts(project, len(points))
    color = np.zeros((height * width, 3), dtype=np.float32)
    weight = np.zeros(height * width, dtype=np.float32)
    color[texels.texel_index] = np.concatenate([p[0] for p in parts])
    weight[texels.texel_index] = np.concatenate([p[1] for p in parts])
    return TextureProjection(
        color=color.reshape(height, width, 3), weight=weight.reshape(height, width), islands=texels.island_mask()
    )
