"""Depth-to-ControlNet conversion: orientation, normalisation over visible geometry, background."""

from __future__ import annotations

import numpy as np
import pytest

from sd_core.depth import depth_to_control_image
from sd_core.errors import ValidationError


def test_near_is_bright_far_is_dim_background_is_black() -> None:
    depth = np.array([[1.0, 2.0, 4.0, 1e10], [np.inf, np.nan, 0.0, -3.0]], dtype=np.float32)
    control = depth_to_control_image(depth, near_percentile=100.0, far_percentile=0.0, far_level=0.1)

    assert control.shape == (2, 4, 3)
    assert control.dtype == np.float32
    assert np.array_equal(control[..., 0], control[..., 2])
    grey = control[..., 0]
    assert grey[0, 0] == pytest.approx(1.0)
    assert grey[0, 2] == pytest.approx(0.1)
    assert grey[0, 0] > grey[0, 1] > grey[0, 2] > 0.0
    assert np.all(grey[0, 3:] == 0.0) and np.all(grey[1] == 0.0)


def test_normalised_in_disparity_like_midas() -> None:
    # Disparities 1, 0.75, 0.5: the middle depth 4/3 sits half way in disparity, not in depth.
    depth = np.array([[1.0, 4.0 / 3.0, 2.0]])
    grey = depth_to_control_image(depth, near_percentile=100.0, far_percentile=0.0, far_level=0.0)[..., 0]
    assert np.allclose(grey, [[1.0, 0.5, 0.0]])


def test_background_does_not_stretch_the_range() -> None:
    """Only visible pixels set near/far: 1e10 background must not squash the subject to white."""
    subject = np.linspace(2.0, 3.0, 100).reshape(10, 10)
    with_background = np.pad(subject, 5, constant_values=1e10)
    alone = depth_to_control_image(subject)
    embedded = depth_to_control_image(with_background)
    assert np.allclose(embedded[5:15, 5:15], alone)
    assert alone[..., 0].min() == pytest.approx(0.08) and alone[..., 0].max() == pytest.approx(1.0)


def test_outlier_does_not_flatten_the_rest() -> None:
    depth = np.linspace(5.0, 10.0, 1000).reshape(25, 40)
    depth[0, 0] = 0.001  # one stray near pixel
    grey = depth_to_control_image(depth)[..., 0]
    assert grey[0, 0] == pytest.approx(1.0)
    assert np.ptp(grey.ravel()[1:]) > 0.8


def test_flat_plane_and_empty_view() -> None:
    assert np.all(depth_to_control_image(np.full((4, 4), 7.0)) == 1.0)
    assert np.all(depth_to_control_image(np.full((4, 4), np.inf)) == 0.0)


@pytest.mark.parametrize(
    ("depth", "options"),
    [
        (np.ones((2, 2, 1)), {}),
        (np.ones((2, 2)), {"near_percentile": 10.0, "far_percentile": 50.0}),
        (np.ones((2, 2)), {"far_level": 1.0}),
    ],
)
def test_bad_input_is_rejected(depth: np.ndarray, options: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        depth_to_control_image(depth, **options)
