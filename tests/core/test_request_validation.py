"""Every artist-facing validation error fires before any model loads, with a message that says what to do."""

import numpy as np
import pytest

from sd_core import ControlSpec, GenerationRequest, ValidationError


def rgb(width: int = 64, height: int = 64) -> np.ndarray:
    return np.full((height, width, 3), 0.5, dtype=np.float32)


def request(**overrides) -> GenerationRequest:
    fields = {"model": "some/model", "prompt": "a red brick wall"}
    fields.update(overrides)
    return GenerationRequest(**fields)


def test_mode_follows_the_given_images():
    assert request().mode == "txt2img"
    assert request(image=rgb()).mode == "img2img"
    assert request(image=rgb(), mask=np.ones((64, 64), np.float32)).mode == "inpaint"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": ""}, "No model is configured"),
        ({"steps": 0}, "Steps must be at least 1"),
        ({"batch_size": 0}, "Batch size"),
        ({"guidance": float("nan")}, "Guidance"),
        ({"scheduler": "magic"}, "Unknown scheduler 'magic'"),
        ({"tiling": "z"}, "Tiling must be one of"),
        ({"width": 32, "height": 64}, "Width must be between 64"),
        ({"width": 64, "height": 8192}, "Height must be between"),
        ({"image": rgb(), "strength": 0.0}, "Strength must be above 0"),
        ({"image": rgb(), "strength": 1.5}, "Strength must be above 0"),
        ({"image": rgb(), "strength": 0.04, "steps": 20}, "runs no denoising step"),
        ({"image": rgb(64, 64), "width": 128, "height": 64}, "input image is 64x64 but the output size is 128x64"),
        ({"image": np.zeros((64, 64), np.float32)}, "must be an RGB image"),
        ({"image": rgb() * np.nan}, "invalid values"),
        ({"mask": np.ones((64, 64), np.float32)}, "needs an input image"),
        ({"image": rgb(), "mask": np.zeros((64, 64), np.float32)}, "The mask is empty"),
        ({"image": rgb(), "mask": np.ones((32, 64), np.float32)}, "mask is 64x32 but the image is 64x64"),
        ({"image": rgb(), "mask": np.ones((64, 64), np.float32), "mask_grow": -1}, "cannot be negative"),
        ({"controls": (ControlSpec("cn", rgb(32, 32)),), "width": 64, "height": 64}, "must match"),
        ({"controls": (ControlSpec("", rgb()),)}, "has no model"),
        ({"controls": (ControlSpec("cn", rgb(), start=0.5, end=0.5),)}, "must start before it ends"),
        ({"controls": (ControlSpec("cn", rgb(), scale=-1),)}, "scale cannot be negative"),
    ],
)
def test_bad_requests_raise_an_artist_readable_error(overrides, message):
    with pytest.raises(ValidationError, match=message):
        request(**overrides).validate()


def test_strength_error_names_the_strength_that_would_work():
    with pytest.raises(ValidationError, match=r"at least 0\.10"):
        request(image=rgb(), strength=0.05, steps=10).validate()


def test_strength_sets_the_number_of_denoising_steps():
    assert request(image=rgb(), strength=0.5, steps=20).denoising_steps == 10
    assert request(steps=20, strength=0.5).denoising_steps == 20  # txt2img ignores strength


def test_size_defaults_to_the_input_image():
    assert request(image=rgb(96, 72)).size == (96, 72)
    assert request().size == (512, 512)


def test_valid_requests_pass():
    request().validate()
    request(image=rgb(), mask=np.eye(64, dtype=np.float32)).validate()
    request(image=rgb(), controls=(ControlSpec("cn", rgb()),)).validate()
