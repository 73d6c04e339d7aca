"""SDXL's VAE is made fp32 once instead of being recast around every call: same images as stock diffusers."""

from __future__ import annotations

import diffusers
import numpy as np
import torch

from sd_core import EngineSettings, GenerationRequest
from sd_core.acceleration import graphable_modules
from sd_core.engine import Engine
from sd_core.schedulers import make_scheduler

SIZE = 64


def request(model: str, mode: str) -> GenerationRequest:
    rng = np.random.default_rng(0)
    image = rng.random((SIZE, SIZE, 3), dtype=np.float32)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[16:48, 16:48] = 1.0
    return GenerationRequest(
        model=model,
        prompt="a mossy stone",
        image=image,
        mask=mask if mode == "inpaint" else None,
        strength=1.0,
        steps=2,
        seed=7,
        width=SIZE,
        height=SIZE,
        scheduler="euler",
    )


def stock_img2img(folder: str, job: GenerationRequest) -> np.ndarray:
    """Stock diffusers in fp16, which upcasts the VAE to fp32 around its encode and decode."""
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(folder, dtype=torch.float16)
    pipe.scheduler = make_scheduler(job.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    assert job.image is not None
    output = pipe(
        prompt=job.prompt,
        image=job.image[None],
        strength=job.strength,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance,
        generator=torch.Generator("cpu").manual_seed(7),
        width=SIZE,
        height=SIZE,
        output_type="np",
    )
    return np.asarray(output.images[0], dtype=np.float32)


def test_sdxl_vae_stays_float32_across_modes_and_matches_stock(tiny_models):
    engine = Engine(EngineSettings(device="cpu", dtype="float16", acceleration="off"))
    model = str(tiny_models["sdxl"])
    pixels = engine.generate(request(model, "img2img")).images[0].pixels
    np.testing.assert_allclose(pixels, stock_img2img(model, request(model, "img2img")), atol=1e-3)

    # A new mode's pipeline (from_pipe casts every shared module to fp16) must not undo it.
    inpainted = engine.generate(request(model, "inpaint")).images[0].pixels
    assert np.isfinite(inpainted).all()
    base, _ = engine.cache.base_pipeline(model)
    assert {parameter.dtype for parameter in base.vae.parameters()} == {torch.float32}
    assert {parameter.dtype for parameter in base.unet.parameters()} == {torch.float16}
    # Nothing recasts it any more, so its encoder and decoder can be CUDA graphs.
    names = [type(module).__name__ for module in graphable_modules(base)]
    assert "Encoder" in names and "Decoder" in names


def test_full_precision_engines_leave_the_vae_alone(tiny_models):
    engine = Engine(EngineSettings(device="cpu", dtype="float32", acceleration="off"))
    model = str(tiny_models["sdxl"])
    engine.generate(request(model, "img2img"))
    base, _ = engine.cache.base_pipeline(model)
    assert base.vae.config.force_upcast  # untouched: diffusers' own logic does nothing at fp32 either
