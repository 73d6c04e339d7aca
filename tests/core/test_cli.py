"""`python -m sd_core generate`: what pipelines script against. Runs in a subprocess, like a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sd_core import LoraSpec
from sd_core.metadata import parse_a1111_parameters

ROOT = Path(__file__).resolve().parents[2]


def sd_core(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "sd_core", "generate", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli-inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (72, 64, 3), dtype=np.uint8)).save(folder / "image.png")
    mask = np.zeros((72, 64), np.uint8)
    mask[20:50, 16:48] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(np.zeros((72, 64), np.uint8)).save(folder / "empty_mask.png")
    depth = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (72, 1))
    Image.fromarray(np.stack([depth] * 3, axis=2)).save(folder / "depth.png")
    return {p.stem: p for p in folder.iterdir()}


def test_inpaint_with_controlnet_writes_pngs_with_parameters(tiny_models, inputs, tmp_path):
    out = tmp_path / "result.png"
    result = sd_core(
        "--model", str(tiny_models["sd1_single"]), "--prompt", "old brass", "--out", str(out),
        "--image", str(inputs["image"]), "--mask", str(inputs["mask"]),
        "--controlnet", str(tiny_models["sd1_controlnet_single"]), "--control-image", str(inputs["depth"]),
        "--control-scale", "0.7", "--steps", "4", "--strength", "0.5", "--seed", "3", "--batch", "2",
        "--scheduler", "euler_a", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "step" in result.stderr  # the progress bar
    second = tmp_path / "result-2.png"
    with Image.open(out) as first, Image.open(second) as other:
        assert first.size == other.size == (64, 72)
        parameters = parse_a1111_parameters(first.text["parameters"])
        original = np.asarray(Image.open(inputs["image"]))
        outside = np.asarray(Image.open(inputs["mask"])) == 0
        assert np.array_equal(np.asarray(first)[outside], original[outside])
    assert parameters["Seed"] == "3" and parameters["Sampler"] == "Euler a"
    assert parameters["Denoising strength"] == "0.5"
    assert "Weight: 0.7" in parameters["ControlNet 0"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "Steps must be at least 1"),
        (["--image", "{image}", "--strength", "0.01"], "runs no denoising step"),
        (["--image", "{image}", "--mask", "{empty_mask}"], "The mask is empty"),
        (["--mask", "{mask}"], "--mask needs --image"),
        (["--controlnet", "cn"], "exactly one --control-image"),
        (["--image", "{missing}"], "Cannot read image"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_models, inputs, tmp_path, extra, message):
    paths = {name: str(path) for name, path in inputs.items()} | {"missing": str(tmp_path / "nope.png")}
    args = [arg.format(**paths) for arg in extra]
    result = sd_core("--model", str(tiny_models["sd1"]), "--prompt", "x", "--out", str(tmp_path / "o.png"), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "o.png").exists()


def test_a_pickled_checkpoint_is_refused_without_running_it(tiny_models, tmp_path):
    from sd_core.testing.tiny_models import write_pickle_checkpoint

    marker = tmp_path / "pwned"
    checkpoint = write_pickle_checkpoint(tiny_models["sd1"], tmp_path / "model.ckpt", marker)
    result = sd_core("--model", str(checkpoint), "--prompt", "x", "--out", str(tmp_path / "o.png"), "--steps", "1")
    assert result.returncode == 2
    assert "is a pickled checkpoint" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(("name", "message"), [("l.pt", "is a pickled LoRA"), ("gone.safetensors", "LoRA not found")])
def test_a_pickled_or_missing_lora_is_refused_before_the_model_loads(tiny_models, tmp_path, name, message):
    from sd_core.testing.tiny_models import _TouchMarkerOnUnpickle

    marker = tmp_path / "pwned"
    trap = {"lora_unet_x.lora_down.weight": torch.zeros(2, 2), "trap": _TouchMarkerOnUnpickle(marker)}
    torch.save(trap, tmp_path / "l.pt")
    result = sd_core(
        "--model", str(tiny_models["sd1"]), "--prompt", "x", "--out", str(tmp_path / "o.png"), "--steps", "1",
        "--device", "cpu", "--lora", f"{tmp_path / name}:0.8",
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert "Loading pipeline components" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "path", "scale"),
    [
        ("moss.safetensors", "moss.safetensors", 1.0),
        ("moss.safetensors:0.6", "moss.safetensors", 0.6),
        ("/loras/moss.safetensors:-1.5", "/loras/moss.safetensors", -1.5),
        (r"C:\loras\moss.safetensors", r"C:\loras\moss.safetensors", 1.0),
        (r"C:\loras\moss.safetensors:2", r"C:\loras\moss.safetensors", 2.0),
    ],
)
def test_a_lora_argument_is_a_path_then_an_optional_scale(text, path, scale):
    assert LoraSpec.from_argument(text) == LoraSpec(path, scale)
