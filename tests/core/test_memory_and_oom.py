"""Sizes the GPU cannot hold are refused up front; an out-of-memory error becomes advice."""

from __future__ import annotations

import pytest
import torch

from sd_core import EngineSettings, GenerationRequest, OutOfMemoryError, ValidationError
from sd_core.engine import Engine
from sd_core.memory import GIB, check_fits, decode_bytes


def test_decode_estimate_grows_with_pixels_and_precision():
    assert decode_bytes(1024, 1024, 2) == 4 * decode_bytes(512, 512, 2)
    assert decode_bytes(512, 512, 4) == 2 * decode_bytes(512, 512, 2)


def test_a_size_over_free_memory_is_refused_with_advice():
    with pytest.raises(ValidationError, match="turn on 'VAE tiling'"):
        check_fits(4096, 4096, 2, free_bytes=4 * GIB, vae_tiling=False)
    check_fits(4096, 4096, 2, free_bytes=4 * GIB, vae_tiling=True)
    check_fits(1024, 1024, 2, free_bytes=4 * GIB, vae_tiling=False)


def test_out_of_memory_during_generation_suggests_the_low_vram_options(tiny_models, monkeypatch):
    engine = Engine(EngineSettings(device="cpu"))
    model = str(tiny_models["sd1"])
    pipe, _ = engine.cache.base_pipeline(model)

    def exhausted(*_args, **_kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipe.unet, "forward", exhausted)
    request = GenerationRequest(model=model, prompt="x", steps=2, width=64, height=64, seed=1)
    with pytest.raises(OutOfMemoryError, match="CPU offload"):
        engine.generate(request)
