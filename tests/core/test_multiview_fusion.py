"""Multi-view fusion maths without Blender: two UV spheres, ray-cast exactly, seen by a ring of cameras.

The fake generators of ``tests.multiview_fakes`` paint views as known functions of world position, so
coverage, accuracy against the true colour field, seams and cross-object paint can all be measured.
"""

from __future__ import annotations

import numpy as np
import pytest

from sd_core.errors import ValidationError
from sd_core.multiview import (
    GRAZING_FACING,
    REGION_CODES,
    Surface,
    View,
    classify,
    fill_unknown,
    last_view_wins,
    seam_score,
    texture_views,
    view_direction,
)
from sd_core.testing import multiview_scene as scene
from tests.multiview_fakes import consistent_generator, inconsistent_generator, independent, world_color

SIZE = 64
TEXTURE = 128


@pytest.fixture(scope="module")
def surfaces() -> list[Surface]:
    return scene.surfaces(TEXTURE)


@pytest.fixture(scope="module")
def views() -> list[View]:
    return scene.ring(SIZE)


def texel_truth(surface: Surface) -> np.ndarray:
    truth = np.zeros((surface.height * surface.width, 3), np.float32)
    truth[surface.texel_index] = world_color(surface.points)
    return truth.reshape(surface.height, surface.width, 3)


def test_consistent_views_cover_every_seen_texel_and_reproduce_the_surface_colours(surfaces, views) -> None:
    result = texture_views(surfaces, views, consistent_generator)
    for surface, texture in zip(surfaces, result.textures, strict=True):
        assert texture.seen.sum() > 0.6 * surface.islands.sum()  # no camera looks at the undersides
        assert (texture.painted == texture.seen).all()  # every seen texel got paint (coverage 100 %)
        assert np.isfinite(texture.color).all() and texture.color.min() > 0.05  # unseen texels filled, no black
        error = np.abs(texture.color - texel_truth(surface)).max(axis=-1)
        # Seen at better than ~70 degrees by some view: exact to resampling error. Only ever seen at grazing
        # angles, a 64-pixel view smears the colour along the surface (still filled, just less sharp).
        well_seen = texture.painted & (texture.best_facing >= GRAZING_FACING)
        assert np.mean(error[well_seen] < 0.03) > 0.99, np.percentile(error[well_seen], [50, 90, 99])
        assert np.mean(error[texture.painted] < 0.03) > 0.9
    assert all(result.generated[:2])


def test_uv_seam_of_the_sphere_is_continuous(surfaces, views) -> None:
    """Columns u = 0 and u = 1 are the same meridian in two islands: projection paints them alike."""
    texture = texture_views(surfaces[:1], views, consistent_generator).textures[0]
    rows = texture.painted[:, 0] & texture.painted[:, -1]
    assert rows.sum() > TEXTURE // 2
    assert np.abs(texture.color[rows, 0] - texture.color[rows, -1]).max() < 0.1


def test_one_object_never_receives_another_objects_paint(surfaces, views) -> None:
    """Paint each sphere pure red or pure green from its labels: no texel may get the other colour."""

    def by_object(task):
        view = next(v for v in views if v.camera is task.camera)
        colors = np.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)[view.labels]
        return np.where(task.soft_mask[..., None] > 0, colors, task.image).astype(np.float32)

    result = texture_views(surfaces, views, by_object)
    red, green = result.textures
    assert red.color[red.painted][:, 1].max() < 0.02 and green.color[green.painted][:, 0].max() < 0.02


def test_fused_seams_are_weaker_than_last_view_wins_with_disagreeing_views(surfaces, views) -> None:
    ours = texture_views(surfaces, views, inconsistent_generator)
    naive_images = texture_views(surfaces, views, independent(inconsistent_generator)).view_images
    naive = last_view_wins(surfaces, views, naive_images)
    for mine, theirs in zip(ours.textures, naive, strict=True):
        ours_score = seam_score(mine, [theirs.owner])
        naive_score = seam_score(theirs, [mine.owner])
        assert ours_score < 0.7 * naive_score, (ours_score, naive_score)


def test_later_views_paint_only_what_is_new_to_them(surfaces, views) -> None:
    result = texture_views(surfaces, views, consistent_generator)
    first, second = result.view_masks[0], result.view_masks[1]
    assert first.sum() > second.sum() > 0  # the second view overlaps the first: it paints less


def test_regions_follow_the_viewing_angle() -> None:
    facing = np.array([0.0, 0.9, 0.9, 0.9, 0.2])
    best = np.array([0.0, 0.0, 0.2, 0.8, 0.9])
    assert classify(facing, best).tolist() == [0, REGION_CODES["generate"], REGION_CODES["refine"], 1, 1]


def test_fill_reaches_every_texel_from_far_away_paint() -> None:
    values = np.zeros((37, 53, 3), np.float32)
    known = np.zeros((37, 53), bool)
    values[3, 4], known[3, 4] = (0.2, 0.4, 0.6), True
    values[30, 50], known[30, 50] = (0.8, 0.6, 0.4), True
    filled = fill_unknown(values, known)
    assert np.allclose(filled[3, 4], (0.2, 0.4, 0.6)) and np.allclose(filled[30, 50], (0.8, 0.6, 0.4))
    assert filled.min() >= 0.2 - 1e-6 and filled.max() <= 0.8 + 1e-6


def test_view_direction_hints(views) -> None:
    hints = [view_direction(view.camera, views[0].camera, scene.TARGET) for view in views]
    assert hints == ["front view", "side view", "side view", "back view", "side view", "side view", "top view"]


def test_nothing_to_texture_is_refused(views) -> None:
    with pytest.raises(ValidationError, match="select"):
        texture_views([], views, consistent_generator)


def test_visibility_worked_out_in_parallel_gives_the_same_textures(surfaces, views, monkeypatch) -> None:
    """Each view's and surface's visibility runs on the thread pool; one at a time, the textures are the same."""
    from sd_core import multiview

    together = texture_views(surfaces, views, inconsistent_generator)
    monkeypatch.setattr(multiview, "map_in_parallel", lambda work, items: [work(item) for item in items])
    one_by_one = texture_views(surfaces, views, inconsistent_generator)
    for ours, theirs in zip(together.textures, one_by_one.textures, strict=True):
        assert np.array_equal(ours.color, theirs.color) and np.array_equal(ours.seen, theirs.seen)
