"""Pixel helpers and PNG metadata that other tools (A1111, image browsers) can read."""

import json

import numpy as np
from PIL import Image, ImageFilter

from sd_core import images
from sd_core.metadata import a1111_parameters, parse_a1111_parameters, save_png


def test_pad_then_crop_returns_the_exact_input():
    pixels = np.random.default_rng(0).random((67, 93, 3), dtype=np.float32)
    padded = images.pad_to_multiple(pixels)
    assert padded.shape == (72, 96, 3)
    assert np.array_equal(images.crop(padded, 93, 67), pixels)


def test_mask_grow_widens_and_feather_softens():
    mask = np.zeros((32, 32), np.float32)
    mask[14:18, 14:18] = 1.0
    grown = images.prepare_mask(mask, grow=3)
    assert grown.sum() == (4 + 6) ** 2
    feathered = images.prepare_mask(mask, feather=2)
    assert 0.0 < feathered[13, 16] < 1.0
    assert feathered[0, 0] == 0.0


def test_mask_growth_is_a_square_max_filter_up_to_the_borders():
    """The separable dilation matches PIL's MaxFilter (what artists' masks were grown with before), edges included."""
    rng = np.random.default_rng(3)
    mask = rng.random((41, 57)) > 0.97
    mask[0, 0] = mask[-1, 30] = True
    thin = [rng.random(shape) > 0.8 for shape in ((1, 9), (9, 1), (5, 3))]
    for grid in (mask, *thin):
        for radius in (0, 1, 4, 9, 60):  # 60: a window wider than the mask
            reference = Image.fromarray(grid.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * radius + 1))
            assert np.array_equal(images.dilate(grid, radius), np.asarray(reference) > 127), (grid.shape, radius)


def test_composite_keeps_unmasked_pixels_bit_exact():
    rng = np.random.default_rng(1)
    original, generated = rng.random((16, 16, 3), dtype=np.float32), rng.random((16, 16, 3), dtype=np.float32)
    mask = np.zeros((16, 16), np.float32)
    mask[4:8, 4:8] = 1.0
    out = images.composite(generated, original, mask)
    assert np.array_equal(out[mask == 0], original[mask == 0])
    assert np.array_equal(out[mask == 1], generated[mask == 1])
    mask[5, 12] = 0.25  # a feathered pixel outside the square: the blended box grows to hold it
    out = images.composite(generated, original, mask)
    np.testing.assert_allclose(out[5, 12], 0.25 * generated[5, 12] + 0.75 * original[5, 12], rtol=1e-6)
    assert np.array_equal(out[mask == 0], original[mask == 0])
    assert np.array_equal(images.composite(generated, original, np.zeros_like(mask)), original)


def test_png_carries_a1111_parameters_and_full_json(tmp_path):
    metadata = {
        "prompt": "stone wall, moss",
        "negative_prompt": "blurry",
        "steps": 20,
        "scheduler": "dpmpp_2m_karras",
        "guidance": 7.0,
        "seed": 1234,
        "size": "64x48",
        "model": "tiny",
        "model_hash": "0123456789",
        "strength": 0.75,
        "controlnets": [{"model": "depth", "scale": 1.0, "start": 0.0, "end": 1.0}],
    }
    path = save_png(np.zeros((48, 64, 3), np.float32), tmp_path / "out.png", metadata)
    with Image.open(path) as png:
        text = png.text
        assert png.size == (64, 48)
    parsed = parse_a1111_parameters(text["parameters"])
    assert parsed["prompt"] == "stone wall, moss"
    assert parsed["negative_prompt"] == "blurry"
    assert parsed["Sampler"] == "DPM++ 2M Karras"
    assert parsed["Seed"] == "1234"
    assert parsed["Denoising strength"] == "0.75"
    assert parsed["ControlNet 0"].startswith("Model: depth")
    assert json.loads(text["sd_core"])["seed"] == 1234
    assert a1111_parameters(metadata).count("\n") == 2
