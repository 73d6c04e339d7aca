"""The engine on tiny random models: every mode and family, and the behaviour artists rely on."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sd_core import CancelledError, ControlSpec, EngineSettings, GenerationRequest, ModelError
from sd_core.engine import Engine
from sd_core.images import prepare_mask

SIZE = 64


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineSettings(device="cpu"))


def picture(width: int = SIZE, height: int = SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((height, width, 3), dtype=np.float32)


def centre_mask(width: int = SIZE, height: int = SIZE) -> np.ndarray:
    mask = np.zeros((height, width), np.float32)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1.0
    return mask


def make_request(model, mode: str, control=None, **overrides) -> GenerationRequest:
    fields = {"model": str(model), "prompt": "a mossy stone", "steps": 2, "seed": 7, "width": SIZE, "height": SIZE}
    if mode in ("img2img", "inpaint"):
        fields["image"] = picture()
        fields["strength"] = 1.0
    if mode == "inpaint":
        fields["mask"] = centre_mask()
    if control is not None:
        fields["controls"] = (ControlSpec(str(control), picture(seed=3)),)
    fields.update(overrides)
    return GenerationRequest(**fields)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint"])
@pytest.mark.parametrize("with_control", [False, True], ids=["plain", "controlnet"])
def test_every_mode_and_family_produces_an_image(engine, tiny_models, family, mode, with_control):
    control = tiny_models[f"{family}_controlnet"] if with_control else None
    result = engine.generate(make_request(tiny_models[family], mode, control))
    assert result.mode == mode
    (image,) = result.images
    assert image.pixels.shape == (SIZE, SIZE, 3)
    assert image.pixels.dtype == np.float32
    assert np.isfinite(image.pixels).all()
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
    assert image.metadata["model_family"] == family


@pytest.mark.parametrize("model_key", ["sd1", "sd1_inpaint", "sdxl"])
def test_pixels_outside_the_inpaint_mask_are_returned_exactly(engine, tiny_models, model_key):
    request = make_request(tiny_models[model_key], "inpaint", mask_feather=2)
    pixels = engine.generate(request).images[0].pixels
    outside = prepare_mask(request.mask, feather=2) == 0  # beyond the feathered edge
    assert outside.mean() > 0.5
    assert np.array_equal(pixels[outside], request.image[outside])
    inside = centre_mask().astype(bool)
    assert not np.allclose(pixels[inside], request.image[inside])


def test_dedicated_inpainting_model_with_controlnet(engine, tiny_models):
    request = make_request(tiny_models["sd1_inpaint"], "inpaint", tiny_models["sd1_controlnet"])
    assert engine.generate(request).images[0].pixels.shape == (SIZE, SIZE, 3)


def test_a_fixed_seed_gives_identical_images_and_another_seed_does_not(engine, tiny_models):
    first = engine.generate(make_request(tiny_models["sd1"], "txt2img", seed=123)).images[0].pixels
    again = engine.generate(make_request(tiny_models["sd1"], "txt2img", seed=123)).images[0].pixels
    other = engine.generate(make_request(tiny_models["sd1"], "txt2img", seed=124)).images[0].pixels
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_batch_variations_are_reproducible_one_by_one(engine, tiny_models):
    batch = engine.generate(make_request(tiny_models["sd1"], "txt2img", seed=10, batch_size=2))
    assert [image.seed for image in batch.images] == [10, 11]
    alone = engine.generate(make_request(tiny_models["sd1"], "txt2img", seed=11)).images[0]
    assert np.array_equal(batch.images[1].pixels, alone.pixels)


@pytest.mark.parametrize(("steps", "strength", "expected"), [(10, 0.5, 5), (4, 1.0, 4), (20, 0.25, 5)])
def test_progress_fires_once_per_denoising_step(engine, tiny_models, steps, strength, expected):
    seen = []
    request = make_request(tiny_models["sd1"], "img2img", steps=steps, strength=strength)
    engine.generate(request, on_progress=seen.append)
    assert [p.step for p in seen] == list(range(1, expected + 1))
    assert all(p.total == expected for p in seen)
    assert seen[-1].preview.shape == (SIZE // 8, SIZE // 8, 3)


def test_cancel_stops_within_one_step_and_skips_the_decode(engine, tiny_models, monkeypatch):
    pipe, _ = engine.cache.base_pipeline(str(tiny_models["sd1"]))
    decodes = []
    original_decode = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda *a, **k: decodes.append(1) or original_decode(*a, **k))
    seen = []
    with pytest.raises(CancelledError):
        engine.generate(
            make_request(tiny_models["sd1"], "txt2img", steps=10),
            on_progress=seen.append,
            should_cancel=lambda: len(seen) >= 1,
        )
    assert len(seen) == 1
    assert decodes == []


def test_any_size_is_kept(engine, tiny_models):
    request = make_request(tiny_models["sd1"], "img2img", image=picture(70, 66), width=70, height=66)
    assert engine.generate(request).images[0].pixels.shape == (66, 70, 3)


def test_seamless_tiling_changes_the_result_and_is_undone_afterwards(engine, tiny_models):
    plain = engine.generate(make_request(tiny_models["sd1"], "txt2img")).images[0].pixels
    tiled = engine.generate(make_request(tiny_models["sd1"], "txt2img", tiling="xy")).images[0].pixels
    plain_again = engine.generate(make_request(tiny_models["sd1"], "txt2img")).images[0].pixels
    assert not np.array_equal(plain, tiled)
    assert np.array_equal(plain, plain_again)


def test_modes_share_one_loaded_model(engine, tiny_models):
    model = str(tiny_models["sd1"])
    engine.generate(make_request(model, "img2img"))
    first, _ = engine.cache.base_pipeline(model)
    engine.generate(make_request(model, "inpaint", tiny_models["sd1_controlnet"]))
    second, _ = engine.cache.base_pipeline(model)
    assert first is second


def test_an_inpainting_model_refuses_img2img_with_advice(engine, tiny_models):
    with pytest.raises(ModelError, match="inpainting model"):
        engine.generate(make_request(tiny_models["sd1_inpaint"], "img2img"))


def test_a_controlnet_of_another_family_is_refused(engine, tiny_models):
    with pytest.raises(ModelError, match="different model family"):
        engine.generate(make_request(tiny_models["sd1"], "img2img", tiny_models["sdxl_controlnet"]))


def test_several_controlnets_at_once(engine, tiny_models):
    control = str(tiny_models["sd1_controlnet"])
    request = make_request(
        tiny_models["sd1"],
        "img2img",
        controls=(
            ControlSpec(control, picture(seed=1), scale=0.5, start=0.0, end=0.5),
            ControlSpec(control, picture(seed=2), scale=1.0, start=0.2, end=1.0),
        ),
    )
    result = engine.generate(request)
    assert len(result.images[0].metadata["controlnets"]) == 2


def test_single_file_results_carry_the_model_hash(engine, tiny_models):
    metadata = engine.generate(make_request(tiny_models["sd1_single"], "txt2img")).images[0].metadata
    assert metadata["model_hash"] and len(metadata["model_hash"]) == 10
    assert metadata["seed"] == 7 and metadata["steps"] == 2


def test_unload_frees_the_models_and_the_next_request_reloads(tiny_models):
    engine = Engine(EngineSettings(device="cpu"))
    model = str(tiny_models["sd1"])
    engine.generate(make_request(model, "txt2img"))
    before, _ = engine.cache.base_pipeline(model)
    engine.unload()
    after, _ = engine.cache.base_pipeline(model)
    assert before is not after


def test_switching_modes_keeps_the_chosen_precision(tiny_models):
    engine = Engine(EngineSettings(device="cpu", dtype="bfloat16"))
    model, control = str(tiny_models["sd1"]), str(tiny_models["sd1_controlnet"])
    engine.generate(make_request(model, "img2img", control))
    base, _ = engine.cache.base_pipeline(model)
    assert {base.unet.dtype, base.vae.dtype, base.text_encoder.dtype} == {torch.bfloat16}
    assert engine.cache.controlnet(control).dtype == torch.bfloat16


def test_reused_pipelines_and_schedulers_give_what_a_fresh_engine_gives(tiny_models):
    """Mode pipelines and schedulers are kept between requests; no state may leak from one request into the next."""
    model, control = str(tiny_models["sd1"]), str(tiny_models["sd1_controlnet"])
    engine = Engine(EngineSettings(device="cpu"))
    first = engine.generate(make_request(model, "img2img", control, scheduler="euler")).images[0].pixels
    multistep = engine.generate(make_request(model, "img2img", control, scheduler="dpmpp_2m", steps=4))
    with pytest.raises(CancelledError):  # leaves a second-order scheduler half-way through
        engine.generate(
            make_request(model, "img2img", control, scheduler="heun", steps=4),
            on_progress=lambda progress: None,
            should_cancel=iter([False, False, True]).__next__,
        )
    again = engine.generate(make_request(model, "img2img", control, scheduler="euler")).images[0].pixels
    np.testing.assert_array_equal(first, again)
    fresh = Engine(EngineSettings(device="cpu"))
    expected = fresh.generate(make_request(model, "img2img", control, scheduler="dpmpp_2m", steps=4))
    np.testing.assert_array_equal(multistep.images[0].pixels, expected.images[0].pixels)
    heun = engine.generate(make_request(model, "img2img", control, scheduler="heun", steps=4)).images[0].pixels
    fresh_heun = fresh.generate(make_request(model, "img2img", control, scheduler="heun", steps=4)).images[0].pixels
    np.testing.assert_array_equal(heun, fresh_heun)


def test_prompt_embeddings_are_reused_only_for_the_same_words(tiny_models):
    model = str(tiny_models["sd1"])
    engine = Engine(EngineSettings(device="cpu"))
    first = engine.generate(make_request(model, "txt2img", negative_prompt="blurry")).images[0].pixels
    other_negative = engine.generate(make_request(model, "txt2img", negative_prompt="dark")).images[0].pixels
    other_prompt = engine.generate(make_request(model, "txt2img", prompt="a brick", negative_prompt="blurry"))
    again = engine.generate(make_request(model, "txt2img", negative_prompt="blurry")).images[0].pixels
    assert not np.array_equal(first, other_negative)
    assert not np.array_equal(first, other_prompt.images[0].pixels)
    np.testing.assert_array_equal(first, again)
    fresh = Engine(EngineSettings(device="cpu")).generate(make_request(model, "inpaint", negative_prompt="blurry"))
    reused = engine.generate(make_request(model, "inpaint", negative_prompt="blurry"))  # another mode, same words
    np.testing.assert_array_equal(fresh.images[0].pixels, reused.images[0].pixels)


@pytest.mark.parametrize(("family", "with_control"), [("sd1", True), ("sd1", False), ("sdxl", True), ("sdxl", False)])
def test_the_engine_computes_what_stock_diffusers_computes(tiny_models, family, with_control):
    """Everything the engine does around the pipeline (kept pipelines, prompt embeddings, the picture encoded
    ahead, input and output conversions) leaves the arithmetic alone: img2img with a negative prompt, against
    diffusers called the documented way."""
    import diffusers

    from sd_core.engine import pipeline_class_name
    from sd_core.schedulers import make_scheduler

    model = tiny_models[family]
    control = tiny_models[f"{family}_controlnet"] if with_control else None
    request = make_request(model, "img2img", control, negative_prompt="blurry", strength=0.6, steps=4)
    request = dataclasses.replace(request, scheduler="euler", guidance=5.0)
    got = Engine(EngineSettings(device="cpu")).generate(request).images[0].pixels
    extra = {"safety_checker": None} if family == "sd1" else {}
    if control is not None:
        extra["controlnet"] = diffusers.ControlNetModel.from_pretrained(control)
    cls = getattr(diffusers, pipeline_class_name(family, "img2img", with_control))
    stock = cls.from_pretrained(model, **extra)
    stock.scheduler = make_scheduler("euler", stock.scheduler.config)
    stock.set_progress_bar_config(disable=True)
    images = {"control_image": request.controls[0].image[None]} if control is not None else {}
    expected = stock(
        prompt=request.prompt,
        negative_prompt="blurry",
        image=request.image[None],
        strength=0.6,
        num_inference_steps=4,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
        **images,
    ).images[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_picture_encoded_ahead_records_no_gradients(tiny_models, monkeypatch):
    """Outside the pipeline's no-grad call, an encode would keep every activation for a backward pass (and the
    graph path, which needs no-grad, would run it eagerly)."""
    from sd_core import engine as engine_module

    grads: list[bool] = []
    encode = engine_module.encode_ahead
    monkeypatch.setattr(
        engine_module, "encode_ahead", lambda *args: grads.append(encode(*args).requires_grad) or encode(*args)
    )
    Engine(EngineSettings(device="cpu")).generate(make_request(tiny_models["sd1"], "img2img"))
    assert grads == [False]
