"""Multi-view texturing, Blender-free: paint one consistent texture per object from several cameras.

Method (TEXTure / Text2Tex style, chosen over SyncMVD's per-step latent fusion because it needs only
the engine's public ``generate``; SyncMVD would need hooks inside the denoising loop): views are
generated one after another. Before each view, the texture painted so far is rendered into that
view, and every visible surface texel is classified by its viewing angle:

* generate - never painted: the model paints it (inpainting mask 1);
* refine   - painted only at a grazing angle and now seen at a better one: the model repaints it,
  starting from the old colour, and the two are blended by facing weight;
* keep     - already painted at a comparable or better angle: the view shows it unchanged, so the
  model paints new regions *around* it and the views agree.

The mask is grown and feathered like the engine's own composite, and texels in the feathered band
are blended by ``mask x facing^FACING_POWER`` weights, so region borders fade instead of cutting.
After the last view, texels no camera saw are filled from painted ones in UV space (pull-push), so no
texel is ever black. Projection back onto the surface is geometry-true: each view's depth (from the
renderer) decides occlusion exactly as single-view baking does, and each view's object labels keep
one object's paint off another.

Everything is numpy (with torch's bilinear lookups, through sd_core.projection) on arrays the caller extracts
(``blender_addon.multiview``); the generator is any callable, so tests can paint views with known functions of
world position.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np

from sd_core import images
from sd_core.depth import depth_to_control_image
from sd_core.errors import ValidationError
from sd_core.projection import (
    CameraModel,
    depth_test,
    dilate,
    map_in_parallel,
    project_points,
    sample_bilinear,
    texel_surface,
)
from sd_core.request import ControlSpec, GenerationRequest, LoraSpec

if TYPE_CHECKING:
    from sd_core.engine import CancelCheck, Engine

GRAZING_FACING = 0.35
"""Facing cosine (about 70 degrees) below which paint counts as grazing: a better view repaints it."""

FACING_POWER = 4.0
"""Blend weight = facing^power: sharply favours head-on views, so stretched grazing paint hardly shows."""

MIN_FACING = 1e-3
"""Facing floor for blend weights: 1e-3 ** FACING_POWER is still a normal float32."""

FILL_SMOOTHING_ITERATIONS = 8
"""Diffusion passes over unseen texels after pull-push, to soften its blocky coarse levels."""

Region = Literal["keep", "refine", "generate"]


@dataclass(frozen=True)
class Surface:
    """One object's texture layout: the world position and normal of every texel its UV triangles cover.

    ``texel_index`` (M,) flat row-major indices into a ``width`` x ``height`` texture (top row first);
    ``points``/``normals`` (M, 3) world space; ``islands`` (H, W) the covered texels.
    """

    name: str
    texel_index: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    islands: np.ndarray
    width: int
    height: int

    @classmethod
    def from_mesh(
        cls,
        name: str,
        uv_triangles: np.ndarray,
        corner_positions: np.ndarray,
        corner_normals: np.ndarray,
        texture_size: int,
    ) -> Surface:
        """Rasterise a mesh given per triangle corner (UVs (T, 3, 2), world positions and normals (T, 3, 3))."""
        texels, points, normals = texel_surface(
            uv_triangles, corner_positions, corner_normals, texture_size, texture_size
        )
        return cls(name, texels.texel_index, points, normals, texels.island_mask(), texture_size, texture_size)

    @cached_property
    def facing_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """Per texel n.p and |p|^2: with them, facing a camera at c costs two matrix-vector products (``_front``)."""
        return np.einsum("ij,ij->i", self.normals, self.points), np.einsum("ij,ij->i", self.points, self.points)


@dataclass(frozen=True)
class View:
    """One camera's render of the scene: what conditions the model and decides visibility.

    ``color`` (H, W, 3) display sRGB, the scene as rendered (context around the objects);
    ``depth`` (H, W) planar depth, inf for background; ``labels`` (H, W) int, k where surface k (1-based,
    in the order the surfaces are given) is the visible object, 0 elsewhere.
    """

    camera: CameraModel
    color: np.ndarray
    depth: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        shape = (self.camera.height, self.camera.width)
        if self.depth.shape != shape or self.labels.shape != shape or self.color.shape != (*shape, 3):
            raise ValidationError(
                f"A view's colour, depth and labels must all be {shape[1]}x{shape[0]}, the camera's size."
            )


@dataclass(frozen=True)
class ViewTask:
    """What a generator gets for one view, in generation order.

    ``image`` the current texture rendered into the view (the scene's colour where nothing is painted);
    ``mask`` (H, W) 1 = paint here (binary, before growing); ``soft_mask`` the grown and feathered mask
    the result must be composited with (0 = return ``image`` unchanged); ``direction`` a prompt hint
    such as "front view".
    """

    index: int
    image: np.ndarray
    mask: np.ndarray
    soft_mask: np.ndarray
    depth: np.ndarray
    camera: CameraModel
    direction: str
    mask_grow: int
    mask_feather: int


ViewGenerator = Callable[[ViewTask], np.ndarray]
"""Returns the view's final (H, W, 3) image, equal to ``task.image`` where ``task.soft_mask`` is 0."""


@dataclass
class SurfaceTexture:
    """One object's fused texture and where it came from (all (H, W), top row first).

    ``color`` (H, W, 3) every texel filled; ``seen`` texels some camera saw; ``painted`` texels that got
    paint from a view (the rest were filled in UV space); ``owner`` the view that weighs most in each
    texel (-1 for none); ``weight`` the summed blend weight; ``best_facing`` the best facing cosine painted.
    """

    color: np.ndarray
    seen: np.ndarray
    painted: np.ndarray
    owner: np.ndarray
    weight: np.ndarray
    best_facing: np.ndarray

    def rgba(self) -> np.ndarray:
        """Opaque (H, W, 4): the whole texture is filled, so the old material never shows through."""
        return np.concatenate([self.color, np.ones((*self.color.shape[:2], 1), np.float32)], axis=2)


@dataclass
class MultiViewResult:
    """Textures in the order of the surfaces; per view the final image, the mask painted, whether it ran."""

    textures: list[SurfaceTexture]
    view_images: list[np.ndarray]
    view_masks: list[np.ndarray]
    generated: list[bool]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TexelView:
    """The texels of a surface one view sees: ``index`` (N,) into the surface's texels, ``pixel_xy`` (N, 2)
    where they land, ``pixel`` (N,) the flat index of the pixel they fall in, ``facing`` (N,) > 0 the trust.

    Compact (only seen texels, often a fifth of the surface), so the per-view work never touches the rest.
    """

    index: np.ndarray
    pixel_xy: np.ndarray
    pixel: np.ndarray
    facing: np.ndarray


def texel_view(surface: Surface, view: View, label: int, *, relative_tolerance: float = 0.005) -> TexelView:
    """Frame, occlusion (the view's depth) and facing tests, plus: the pixel must show this very object.

    The label test is what keeps one object's paint off another where depth alone is ambiguous, e.g.
    two objects touching, or a texel just past a silhouette whose pixel shows the neighbour.
    """
    camera = view.camera
    # Back-facing texels (about half) are culled before projection and the depth test.
    front, points, facing = _front(surface, camera)
    projected = project_points(camera, points)
    columns = np.clip(np.floor(projected.pixel_xy[:, 0]).astype(np.int64), 0, camera.width - 1)
    rows = np.clip(np.floor(projected.pixel_xy[:, 1]).astype(np.int64), 0, camera.height - 1)
    pixel = rows * camera.width + columns
    weight = facing.astype(np.float32)
    visible = projected.in_frame & (weight > 0.0) & (view.labels.ravel()[pixel] == label)
    visible &= depth_test(camera, projected, view.depth, facing, relative_tolerance=relative_tolerance)
    keep = np.flatnonzero(visible)  # np.take with indices: several times faster than boolean or 2-D fancy indexing
    return TexelView(front[keep], np.take(projected.pixel_xy, keep, axis=0), pixel[keep], weight[keep])


def _front(surface: Surface, camera: CameraModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and positions of the texels facing the camera, and their cosines as ``facing_weight`` gives them.

    Expanded as n.(c - p) = n.c - n.p and |c - p|^2 = |c|^2 - 2 c.p + |p|^2 with ``Surface.facing_terms``,
    so the whole surface costs one product with the normals and the front half one with the points,
    instead of building the (M, 3) directions to the camera for every texel.
    """
    camera_to_world = camera.camera_to_world
    if camera.is_orthographic:
        cosine = surface.normals @ camera_to_world[:3, 2]
        front = np.flatnonzero(cosine > 0.0)
        return front, np.take(surface.points, front, axis=0), np.minimum(cosine[front], 1.0)
    centre = camera_to_world[:3, 3]
    normal_offset, squared_norm = surface.facing_terms
    toward = surface.normals @ centre - normal_offset
    front = np.flatnonzero(toward > 0.0)
    points = np.take(surface.points, front, axis=0)
    squared_distance = squared_norm[front] - 2.0 * (points @ centre) + centre @ centre
    return front, points, np.minimum(toward[front] / np.sqrt(np.maximum(squared_distance, 1e-24)), 1.0)


REGION_CODES: dict[Region, int] = {"keep": 1, "refine": 2, "generate": 3}
"""Codes ``classify`` returns; 0 means the view does not see the texel. Ordered so ">= refine" means repaint."""


def classify(facing: np.ndarray, best_facing: np.ndarray) -> np.ndarray:
    """Per texel region code for a view seeing it at ``facing``, given the best facing it was painted at."""
    seen = facing > 0.0
    unpainted = best_facing <= 0.0
    refine = ~unpainted & (best_facing < GRAZING_FACING) & (facing >= GRAZING_FACING)
    codes = [0, REGION_CODES["generate"], REGION_CODES["refine"]]
    return np.select([~seen, unpainted, refine], codes, default=REGION_CODES["keep"]).astype(np.int8)


def sample_object(image: np.ndarray, labels: np.ndarray, label: int, pixel_xy: np.ndarray) -> np.ndarray:
    """Bilinear lookup that reads only pixels of object ``label``: no colour bleeds across a silhouette."""
    inside = (labels == label).astype(np.float32)[..., None]
    premultiplied = sample_bilinear(np.concatenate([image * inside, inside], axis=2), pixel_xy)
    coverage = np.maximum(premultiplied[:, 3:], 1e-6)
    return np.clip(premultiplied[:, :3] / coverage, 0.0, 1.0)


def splat(pixel: np.ndarray, values: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Average per-point values into the pixels they fall in (flat indices): ((H, W, C) mean, (H, W) bool hit)."""
    counts = np.bincount(pixel, minlength=width * height).astype(np.float32)
    sums = np.stack([np.bincount(pixel, values[:, c], minlength=width * height) for c in range(values.shape[1])], 1)
    hit = counts > 0
    mean = np.where(hit[:, None], sums / np.maximum(counts, 1.0)[:, None], 0.0).astype(np.float32)
    return mean.reshape(height, width, -1), hit.reshape(height, width)


def fill_unknown(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill every unknown texel of (H, W, C) ``values`` smoothly from the known ones (pull-push).

    Pull: average known texels into ever coarser levels; push: each unknown texel takes the nearest
    coarser level's average, then a few diffusion passes soften the block edges. Cost O(H x W), unlike
    dilation, which needs as many passes as the widest hole. With nothing known, mid grey.
    """
    if not known.any():
        return np.full(values.shape, 0.5, dtype=np.float32)
    weight = known.astype(np.float32)
    filled = np.ascontiguousarray(_pull_push(values * weight[..., None], weight))
    # Diffuse through flat neighbour indices of the unknown texels only (edges clamp), not whole padded images.
    height, width = known.shape
    unknown = np.flatnonzero(~known)
    rows, columns = np.divmod(unknown, width)
    neighbours = (
        np.maximum(rows - 1, 0) * width + columns,
        np.minimum(rows + 1, height - 1) * width + columns,
        rows * width + np.maximum(columns - 1, 0),
        rows * width + np.minimum(columns + 1, width - 1),
    )
    flat = filled.reshape(height * width, -1)
    for _ in range(FILL_SMOOTHING_ITERATIONS):
        up, down, left, right = (np.take(flat, neighbour, axis=0) for neighbour in neighbours)
        flat[unknown] = (up + down + left + right) / 4.0
    return filled


def _pull_push(premultiplied: np.ndarray, weight: np.ndarray) -> np.ndarray:
    height, width = weight.shape
    has = weight > 0
    if has.all() or (height == 1 and width == 1):
        return np.where(has[..., None], premultiplied / np.maximum(weight, 1e-12)[..., None], 0.0).astype(np.float32)
    if height % 2 or width % 2:
        pad = ((0, height % 2), (0, width % 2))
        premultiplied, weight = np.pad(premultiplied, (*pad, (0, 0))), np.pad(weight, pad)
    coarse = _pull_push(_sum_2x2(premultiplied), _sum_2x2(weight))
    filled = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)[:height, :width]
    # Known texels keep their own average, written over the coarse level in place (no full-size temporaries).
    np.divide(
        premultiplied[:height, :width],
        np.maximum(weight[:height, :width], 1e-12)[..., None],
        out=filled,
        where=has[..., None],
    )
    return filled


def _sum_2x2(values: np.ndarray) -> np.ndarray:
    return values[0::2, 0::2] + values[1::2, 0::2] + values[0::2, 1::2] + values[1::2, 1::2]


def view_direction(camera: CameraModel, reference: CameraModel, centre: np.ndarray) -> str:
    """A prompt hint from where the camera stands around ``centre``, relative to the first view's side.

    Text2Tex/TEXTure add "front/side/back view" so a real model does not paint a second face on the back.
    """
    offset = camera.camera_to_world[:3, 3] - centre
    reference_offset = reference.camera_to_world[:3, 3] - centre
    distance = max(float(np.linalg.norm(offset)), 1e-12)
    elevation = math.degrees(math.asin(float(np.clip(offset[2] / distance, -1.0, 1.0))))
    if elevation > 60.0:
        return "top view"
    if elevation < -60.0:
        return "bottom view"
    azimuth = math.degrees(math.atan2(offset[1], offset[0]) - math.atan2(reference_offset[1], reference_offset[0]))
    azimuth = abs((azimuth + 180.0) % 360.0 - 180.0)
    return "front view" if azimuth < 45.0 else "back view" if azimuth > 135.0 else "side view"


def mask_margins(width: int, height: int) -> tuple[int, int]:
    """(grow, feather) pixels for a view: the feather spans ~1/128 of the image, the grow covers its tail.

    Growing by twice the feather keeps the blurred mask at ~1 over every texel the view must paint,
    so those texels get the view's own colours, not a mix with the placeholder under the mask.
    """
    feather = max(1, round(max(width, height) / 128))
    return 2 * feather + 1, feather


def texture_views(
    surfaces: Sequence[Surface],
    views: Sequence[View],
    generate: ViewGenerator,
    *,
    on_view: Callable[[int, int], None] | None = None,
) -> MultiViewResult:
    """Generate the views in order, each inpainting what is new to it, and fuse them into one texture per surface."""
    if not surfaces:
        raise ValidationError("No objects to texture: select at least one mesh.")
    if not views:
        raise ValidationError("No cameras to texture from: add cameras or let the add-on place a ring.")
    started = time.perf_counter()
    pairs = [(view, label, surface) for view in views for label, surface in enumerate(surfaces, 1)]
    seen = map_in_parallel(lambda pair: texel_view(pair[2], pair[0], pair[1]), pairs)  # each view and surface apart
    geometry = [seen[start : start + len(surfaces)] for start in range(0, len(seen), len(surfaces))]
    states = [_empty_state(surface) for surface in surfaces]
    centre = np.concatenate([surface.points for surface in surfaces]).mean(axis=0)
    timings = {"visibility_s": time.perf_counter() - started, "generate_s": 0.0, "fuse_s": 0.0}

    view_images: list[np.ndarray] = []
    view_masks: list[np.ndarray] = []
    generated: list[bool] = []
    for index, view in enumerate(views):
        if on_view is not None:
            on_view(index, len(views))
        fuse_start = time.perf_counter()
        task = _task_for_view(index, view, views[0].camera, centre, surfaces, geometry[index], states)
        timings["fuse_s"] += time.perf_counter() - fuse_start
        runs = bool(task.mask.any())
        if runs:
            generate_start = time.perf_counter()
            final = np.clip(np.asarray(generate(task), dtype=np.float32), 0.0, 1.0)
            timings["generate_s"] += time.perf_counter() - generate_start
            if final.shape != task.image.shape:
                raise ValidationError(
                    f"View {index + 1}: the generator returned {final.shape}, not {task.image.shape}."
                )
        else:
            final = task.image
        fuse_start = time.perf_counter()
        if runs:
            for label, state in enumerate(states, 1):
                _fuse_view(index, view, label, final, task.soft_mask, geometry[index][label - 1], state)
        timings["fuse_s"] += time.perf_counter() - fuse_start
        view_images.append(final)
        view_masks.append(task.mask)
        generated.append(runs)

    fill_start = time.perf_counter()
    textures = [_finish_texture(surface, state) for surface, state in zip(surfaces, states, strict=True)]
    timings["fill_s"] = time.perf_counter() - fill_start
    return MultiViewResult(textures, view_images, view_masks, generated, timings)


@dataclass
class _State:
    """Running per-texel accumulators of one surface (flat over its M covered texels)."""

    color: np.ndarray
    weight: np.ndarray
    best_facing: np.ndarray
    owner: np.ndarray
    owner_weight: np.ndarray
    seen: np.ndarray


def _empty_state(surface: Surface) -> _State:
    count = len(surface.texel_index)
    return _State(
        color=np.zeros((count, 3), np.float32),
        weight=np.zeros(count, np.float32),
        best_facing=np.zeros(count, np.float32),
        owner=np.full(count, -1, np.int32),
        owner_weight=np.zeros(count, np.float32),
        seen=np.zeros(count, bool),
    )


def _task_for_view(
    index: int,
    view: View,
    first_camera: CameraModel,
    centre: np.ndarray,
    surfaces: Sequence[Surface],
    geometry: Sequence[TexelView],
    states: Sequence[_State],
) -> ViewTask:
    """Render the painted texture into the view and build the mask of what it must paint."""
    width, height = view.camera.width, view.camera.height
    painted_pixels = np.zeros((height, width, 3), np.float32)
    painted_hit = np.zeros((height, width), bool)
    needs_paint = np.zeros((height, width), bool)
    for label, (texels, state) in enumerate(zip(geometry, states, strict=True), 1):
        state.seen[texels.index] = True
        best_facing = state.best_facing[texels.index]
        on_object = view.labels == label
        painted = best_facing > 0.0
        if painted.any():
            painted_texels = texels.index[painted]
            colors, hit = splat(texels.pixel[painted], np.take(state.color, painted_texels, axis=0), width, height)
            box = _bounding_box(hit & on_object, PAINT_DILATION)
            colors, hit = dilate(colors[box], hit[box] & on_object[box], PAINT_DILATION)
            hit &= on_object[box]
            painted_pixels[box][hit] = colors[hit]
            painted_hit[box] |= hit
        paint = classify(texels.facing, best_facing) >= REGION_CODES["refine"]
        needs_paint.ravel()[texels.pixel[paint]] = True
        needs_paint |= on_object & ~painted_hit  # pixels of the object no painted texel reaches
    image = np.where(painted_hit[..., None], painted_pixels, view.color).astype(np.float32)
    mask = needs_paint.astype(np.float32)
    grow, feather = mask_margins(width, height)
    soft_mask = images.prepare_mask(mask, grow, feather) if mask.any() else mask
    direction = view_direction(view.camera, first_camera, centre)
    return ViewTask(index, image, mask, soft_mask, view.depth, view.camera, direction, grow, feather)


PAINT_DILATION = 2
"""Pixels the painted texture is grown by when rendered into a view, closing gaps between splatted texels."""


def _bounding_box(known: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The rows and columns around ``known`` (H, W) plus ``margin``: all that ``margin`` dilation passes can reach.

    Dilating just this box gives the same pixels as the whole view, at the cost of the object's size only.
    """
    rows, columns = np.flatnonzero(known.any(axis=1)), np.flatnonzero(known.any(axis=0))
    if not len(rows):
        return slice(0, 0), slice(0, 0)
    return (
        slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
        slice(max(columns[0] - margin, 0), columns[-1] + margin + 1),
    )


def _fuse_view(
    index: int,
    view: View,
    label: int,
    final: np.ndarray,
    soft_mask: np.ndarray,
    texels: TexelView,
    state: _State,
) -> None:
    """Blend the view's final image into the texels it painted, weighted by mask and facing."""
    region = classify(texels.facing, state.best_facing[texels.index])
    mask_at_texel = sample_bilinear(soft_mask[..., None], texels.pixel_xy)[:, 0]
    mask_weight = np.where(region == REGION_CODES["generate"], 1.0, mask_at_texel)
    in_mask = np.flatnonzero(mask_weight > 0.0)
    touched, mask_weight = texels.index[in_mask], mask_weight[in_mask]
    if not len(touched):
        return
    facing = texels.facing[in_mask]
    # The floor keeps a grazing texel's weight far above float32's underflow, so it is painted, never black.
    weight = (mask_weight * np.maximum(facing, MIN_FACING) ** FACING_POWER).astype(np.float32)
    colors = sample_object(final, view.labels, label, np.take(texels.pixel_xy, in_mask, axis=0))
    old_weight = state.weight[touched]
    total = old_weight + weight
    old_color = np.take(state.color, touched, axis=0)
    state.color[touched] = (old_color * old_weight[:, None] + colors * weight[:, None]) / total[:, None]
    state.weight[touched] = total
    best_facing = state.best_facing[touched]
    state.best_facing[touched] = np.where(mask_weight >= 0.5, np.maximum(best_facing, facing), best_facing)
    owner_weight = state.owner_weight[touched]
    state.owner[touched[weight > owner_weight]] = index
    state.owner_weight[touched] = np.maximum(owner_weight, weight)


def _finish_texture(surface: Surface, state: _State) -> SurfaceTexture:
    """Scatter the per-texel state into images and fill what no camera painted."""
    size = surface.height * surface.width
    shape = (surface.height, surface.width)

    def image(values: np.ndarray, fill: float) -> np.ndarray:
        flat = np.full((size, *values.shape[1:]), fill, dtype=values.dtype)
        flat[surface.texel_index] = values
        return flat.reshape(*shape, *values.shape[1:])

    painted = image(state.weight > 0.0, False)
    color = fill_unknown(image(state.color, 0.0), painted)
    return SurfaceTexture(
        color=color,
        seen=image(state.seen, False),
        painted=painted,
        owner=image(state.owner, -1),
        weight=image(state.weight, 0.0),
        best_facing=image(state.best_facing, 0.0),
    )


def last_view_wins(
    surfaces: Sequence[Surface], views: Sequence[View], view_images: Sequence[np.ndarray]
) -> list[SurfaceTexture]:
    """The naive fusion to compare against: each texel takes the colour of the last view that sees it."""
    textures = []
    for label, surface in enumerate(surfaces, 1):
        state = _empty_state(surface)
        for index, (view, final) in enumerate(zip(views, view_images, strict=True)):
            texels = texel_view(surface, view, label)
            seen = texels.index
            state.color[seen] = sample_object(final, view.labels, label, texels.pixel_xy)
            state.weight[seen] = 1.0
            state.owner[seen] = index
            state.best_facing[seen] = texels.facing
            state.seen[seen] = True
        textures.append(_finish_texture(surface, state))
    return textures


def seam_score(texture: SurfaceTexture, owners: Sequence[np.ndarray] = ()) -> float:
    """Mean colour step (mean absolute RGB difference) between 4-neighbour texels on a view-region border.

    A border pair: both texels painted, owned by different views in ``texture.owner`` or in any of
    ``owners`` (pass another method's owner map to score both on the same borders). 0 if no border.
    """
    maps = [texture.owner, *owners]
    steps = []
    for axis in (0, 1):
        first = [slice(None)] * 2
        second = [slice(None)] * 2
        first[axis], second[axis] = slice(None, -1), slice(1, None)
        both = texture.painted[tuple(first)] & texture.painted[tuple(second)]
        border = np.zeros_like(both)
        for owner in maps:
            border |= owner[tuple(first)] != owner[tuple(second)]
        difference = np.abs(texture.color[tuple(first)] - texture.color[tuple(second)]).mean(axis=-1)
        steps.append(difference[both & border])
    joined = np.concatenate(steps)
    return float(joined.mean()) if len(joined) else 0.0


def engine_generator(
    engine: Engine,
    *,
    model: str,
    prompt: str,
    negative_prompt: str = "",
    depth_model: str = "",
    depth_scale: float = 1.0,
    steps: int = 20,
    guidance: float = 7.0,
    strength: float = 1.0,
    seed: int = 0,
    scheduler: str = "dpmpp_2m_karras",
    loras: tuple[LoraSpec, ...] = (),
    should_cancel: CancelCheck | None = None,
) -> ViewGenerator:
    """A generator that inpaints each view through the engine's public API, depth-conditioned when asked.

    The view direction is appended to the prompt; the seed is the same for every view so a real model
    keeps its style; the engine composites with the same grow/feather the fusion blends with.
    """

    def generate(task: ViewTask) -> np.ndarray:
        controls = ()
        if depth_model:
            controls = (ControlSpec(depth_model, depth_to_control_image(task.depth), depth_scale),)
        height, width = task.mask.shape
        request = GenerationRequest(
            model=model,
            loras=loras,
            prompt=f"{prompt}, {task.direction}" if prompt else task.direction,
            negative_prompt=negative_prompt,
            image=task.image,
            mask=task.mask,
            controls=controls,
            width=width,
            height=height,
            strength=strength,
            steps=steps,
            guidance=guidance,
            seed=seed,
            scheduler=scheduler,
            mask_grow=task.mask_grow,
            mask_feather=task.mask_feather,
        )
        return engine.generate(request, should_cancel=should_cancel).images[0].pixels

    return generate
