"""LoRAs on tiny random models: merged exactly where and as much as their files say, taken out exactly, and
every bad file refused with a message before a weight changes."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sd_core import (
    EngineSettings,
    GenerationRequest,
    LoraSpec,
    ModelError,
    OutOfMemoryError,
    UnsafeModelError,
    ValidationError,
)
from sd_core.acceleration import CudaGraphAccelerator
from sd_core.engine import Engine
from sd_core.lora import LoraMerger
from sd_core.metadata import a1111_parameters
from sd_core.testing.loras import random_updates, write_kohya_lora

SIZE = 64
RANK = 2
ALPHA = 1.0
# (network, module path) of layers the test LoRAs change: a self-attention query (fused with k and v on the
# accelerated path), a ResNet's 3x3 convolution (LoCon) and a text encoder's query.
SD1_LAYERS = [
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("unet", "down_blocks.0.resnets.0.conv1"),
    ("unet", "up_blocks.1.resnets.0.time_emb_proj"),
    ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"),
]
# The same kind of layers in SDXL's original block names, as kohya's SDXL scripts write them, and what they are.
SDXL_ORIGINAL_NAMES = {
    "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q": "down_blocks.1.attentions.0.transformer_blocks.0."
    "attn1.to_q",
    "lora_unet_input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
    "lora_unet_middle_block_1_transformer_blocks_1_ff_net_2": "mid_block.attentions.0.transformer_blocks.1.ff.net.2",
}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineSettings(device="cpu"))


def request(model: Path, *loras: LoraSpec, **overrides) -> GenerationRequest:
    fields = {"model": str(model), "prompt": "a mossy stone", "steps": 2, "seed": 7, "width": SIZE, "height": SIZE}
    return GenerationRequest(**fields, loras=loras, **overrides)


def networks_of(engine: Engine, model: Path) -> dict[str, torch.nn.Module]:
    base = engine.cache.base_pipeline(str(model))[0]
    names = ("unet", "text_encoder", "text_encoder_2")
    return {name: getattr(base, name) for name in names if getattr(base, name, None) is not None}


def layer(networks, network: str, path: str) -> torch.nn.Module:
    """The module a LoRA file's layer name means (transformers 5's CLIPTextModel has no ``text_model`` level)."""
    try:
        return networks[network].get_submodule(path)
    except AttributeError:
        return networks[network].get_submodule(path.removeprefix("text_model."))


def lora_tensors(networks, layers, seed: int = 0) -> dict[tuple[str, str], tuple[torch.Tensor, ...]]:
    """Random (down, up) weights of rank ``RANK`` for each (network, module path), shaped like kohya's."""
    return random_updates(
        {(network, path): layer(networks, network, path).weight.shape for network, path in layers}, RANK, seed
    )


def expected_weight(original: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    delta = (up.flatten(1) @ down.flatten(1)) * (scale * ALPHA / RANK)
    return (original.float() + delta.reshape(original.shape)).to(original.dtype)


def weights(networks) -> dict[str, torch.Tensor]:
    """Every parameter, by network and module path; shared storage (fused projections) listed under each name."""
    return {
        f"{name}.{key}": tensor.detach().clone()
        for name, network in networks.items()
        for key, tensor in network.named_parameters(remove_duplicate=False)
    }


def weight_key(networks, network: str, path: str) -> str:
    module = layer(networks, network, path)
    return next(f"{network}.{name}.weight" for name, m in networks[network].named_modules() if m is module)


def test_a_kohya_lora_adds_its_scaled_update_to_exactly_its_layers(engine, tiny_models, tmp_path):
    networks = networks_of(engine, tiny_models["sd1"])
    before = weights(networks)
    plain = engine.generate(request(tiny_models["sd1"])).images[0].pixels
    tensors = lora_tensors(networks, SD1_LAYERS)
    lora = LoraSpec(str(write_kohya_lora(tmp_path / "moss.safetensors", tensors, ALPHA)), 0.7)

    styled = engine.generate(request(tiny_models["sd1"], lora)).images[0].pixels

    after = weights(networks)
    changed = {weight_key(networks, network, path): tensors[network, path] for network, path in SD1_LAYERS}
    for key, tensor in before.items():
        if key in changed:
            down, up = changed[key]
            torch.testing.assert_close(after[key], expected_weight(tensor, down, up, 0.7), atol=1e-6, rtol=1e-5)
            assert not torch.equal(after[key], tensor)
        else:
            assert torch.equal(after[key], tensor), key
    assert np.abs(styled - plain).max() > 1e-3
    engine.generate(request(tiny_models["sd1"]))  # leave the shared engine without LoRAs


def test_taking_loras_out_gives_back_the_very_same_weights_and_pixels(engine, tiny_models, tmp_path):
    networks = networks_of(engine, tiny_models["sd1"])
    before = weights(networks)
    plain = engine.generate(request(tiny_models["sd1"])).images[0].pixels
    path = str(write_kohya_lora(tmp_path / "a.safetensors", lora_tensors(networks, SD1_LAYERS), ALPHA))
    other = str(write_kohya_lora(tmp_path / "b.safetensors", lora_tensors(networks, SD1_LAYERS[:2], seed=1), ALPHA))
    for loras in [(LoraSpec(path, 1.0),), (LoraSpec(path, -0.5), LoraSpec(other, 2.0)), (LoraSpec(other),)]:
        engine.generate(request(tiny_models["sd1"], *loras))

    again = engine.generate(request(tiny_models["sd1"])).images[0].pixels

    assert all(torch.equal(tensor, before[key]) for key, tensor in weights(networks).items())
    np.testing.assert_array_equal(again, plain)


def test_a_new_scale_is_merged_onto_the_original_not_onto_the_last_merge(tiny_models, tmp_path):
    first, fresh = Engine(EngineSettings(device="cpu")), Engine(EngineSettings(device="cpu"))
    path = str(
        write_kohya_lora(
            tmp_path / "a.safetensors", lora_tensors(networks_of(first, tiny_models["sd1"]), SD1_LAYERS), ALPHA
        )
    )
    for scale in (1.0, 3.0, 0.5):
        first.generate(request(tiny_models["sd1"], LoraSpec(path, scale)))
    fresh.generate(request(tiny_models["sd1"], LoraSpec(path, 0.5)))

    got, expected = weights(networks_of(first, tiny_models["sd1"])), weights(networks_of(fresh, tiny_models["sd1"]))
    assert all(torch.equal(got[key], expected[key]) for key in expected)


def test_a_scale_of_zero_gives_the_plain_picture(engine, tiny_models, tmp_path):
    networks = networks_of(engine, tiny_models["sd1"])
    plain = engine.generate(request(tiny_models["sd1"])).images[0].pixels
    path = str(write_kohya_lora(tmp_path / "a.safetensors", lora_tensors(networks, SD1_LAYERS), ALPHA))
    zero = engine.generate(request(tiny_models["sd1"], LoraSpec(path, 0.0))).images[0].pixels
    np.testing.assert_array_equal(zero, plain)


def test_a_text_encoder_lora_changes_the_prompt_embeddings_kept_between_requests(engine, tiny_models, tmp_path):
    networks = networks_of(engine, tiny_models["sd1"])
    plain = engine.generate(request(tiny_models["sd1"])).images[0].pixels  # its embeddings are now kept
    text_only = [layer for layer in SD1_LAYERS if layer[0] == "text_encoder"]
    path = str(write_kohya_lora(tmp_path / "words.safetensors", lora_tensors(networks, text_only), ALPHA))
    styled = engine.generate(request(tiny_models["sd1"], LoraSpec(path))).images[0].pixels
    assert np.abs(styled - plain).max() > 1e-3
    again = engine.generate(request(tiny_models["sd1"])).images[0].pixels
    np.testing.assert_array_equal(again, plain)


def test_sdxl_loras_in_the_original_block_names_and_for_both_text_encoders(engine, tiny_models, tmp_path):
    networks = networks_of(engine, tiny_models["sdxl"])
    before = weights(networks)
    layers = [("unet", path) for path in SDXL_ORIGINAL_NAMES.values()]
    layers += [("text_encoder", "text_model.encoder.layers.1.mlp.fc1")]
    layers += [("text_encoder_2", "text_model.encoder.layers.0.self_attn.v_proj")]
    tensors = lora_tensors(networks, layers)
    names = {path: name for name, path in SDXL_ORIGINAL_NAMES.items()}
    lora = LoraSpec(str(write_kohya_lora(tmp_path / "xl.safetensors", tensors, ALPHA, names)), 0.8)

    engine.generate(request(tiny_models["sdxl"], lora))

    after = weights(networks)
    for (network, path), (down, up) in tensors.items():
        key = weight_key(networks, network, path)
        torch.testing.assert_close(after[key], expected_weight(before[key], down, up, 0.8), atol=1e-6, rtol=1e-5)
    assert sum(not torch.equal(after[key], tensor) for key, tensor in before.items()) == len(layers)
    engine.generate(request(tiny_models["sdxl"]))


# diffusers' PEFT settings for a file: alpha 4 for the UNet except its queries (alpha 1), none for the text encoder
PEFT_SETTINGS = {"unet.r": RANK, "unet.lora_alpha": 4 * ALPHA, "unet.alpha_pattern": {"attn1.to_q": ALPHA}}
# rsLoRA scales by alpha / sqrt(rank), not alpha / rank: this alpha means kohya's ALPHA / RANK
RSLORA_SETTINGS = {"unet.lora_alpha": ALPHA / RANK * math.sqrt(RANK), "unet.use_rslora": True}


def other_layout_key(layout: str, network: str, module: str, part: str) -> str:
    """Where ``layout`` keeps the ``part`` ("down" or "up") weight of a layer."""
    if layout == "diffusers":
        return f"{network}.{module}.lora.{part}.weight"
    if layout == "old diffusers" and module.endswith(("to_q", "q_proj")):  # its attention processors' queries
        attention = module.rpartition(".")[0]
        middle = "processor." if network == "unet" else ""
        return f"{network}.{attention}.{middle}to_q_lora.{part}.weight"
    if layout == "old diffusers":
        return f"{network}.{module}.lora_linear_layer.{part}.weight"
    prefix = "" if layout == "peft, a UNet's alone" and network == "unet" else f"{network}."
    return f"{prefix}{module}.lora_{'A' if part == 'down' else 'B'}.weight"


def down_factor(layout: str, network: str, module: str) -> float:
    """What a file's down weights must carry so that it means the kohya file's ``ALPHA / RANK``."""
    if layout == "peft with settings" and network == "unet":
        return 1.0 if module.endswith("attn1.to_q") else 0.25
    if layout == "peft, rsLoRA" and network == "unet":
        return 1.0
    return ALPHA / RANK  # no alpha stored: PEFT's default, alpha = rank


@pytest.mark.parametrize(
    "layout", ["peft", "peft with settings", "peft, rsLoRA", "peft, a UNet's alone", "diffusers", "old diffusers"]
)
def test_diffusers_and_peft_layouts_merge_like_kohyas(tiny_models, tmp_path, layout):
    settings = {"peft with settings": PEFT_SETTINGS, "peft, rsLoRA": RSLORA_SETTINGS}.get(layout)
    merged = []
    for kohya in (True, False):
        engine = Engine(EngineSettings(device="cpu"))
        networks = networks_of(engine, tiny_models["sd1"])
        tensors = lora_tensors(networks, SD1_LAYERS)
        path = tmp_path / f"{kohya}.safetensors"
        if kohya:
            write_kohya_lora(path, tensors, ALPHA)
        else:
            state = {}
            for (network, module), (down, up) in tensors.items():
                state[other_layout_key(layout, network, module, "down")] = down * down_factor(layout, network, module)
                state[other_layout_key(layout, network, module, "up")] = up
            save_file(state, str(path), metadata={"lora_adapter_metadata": json.dumps(settings)} if settings else None)
        engine.generate(request(tiny_models["sd1"], LoraSpec(str(path))))
        merged.append(weights(networks))
    for key, tensor in merged[0].items():
        torch.testing.assert_close(merged[1][key], tensor, atol=1e-6, rtol=1e-5)


def test_two_loras_on_one_layer_add_up(engine, tiny_models, tmp_path):
    networks = networks_of(engine, tiny_models["sd1"])
    before = weights(networks)
    first, second = lora_tensors(networks, SD1_LAYERS[:1], seed=1), lora_tensors(networks, SD1_LAYERS[:1], seed=2)
    loras = [
        LoraSpec(str(write_kohya_lora(tmp_path / f"{n}.safetensors", t, ALPHA)), s)
        for n, t, s in [(1, first, 0.5), (2, second, -2.0)]
    ]
    engine.generate(request(tiny_models["sd1"], *loras))
    key = weight_key(networks, *SD1_LAYERS[0])
    (down1, up1), (down2, up2) = first[SD1_LAYERS[0]], second[SD1_LAYERS[0]]
    delta = (up1 @ down1) * (0.5 * ALPHA / RANK) + (up2 @ down2) * (-2.0 * ALPHA / RANK)
    torch.testing.assert_close(weights(networks)[key], before[key] + delta, atol=1e-6, rtol=1e-5)
    engine.generate(request(tiny_models["sd1"]))


def test_a_model_loaded_again_gets_its_loras_merged_again(tiny_models, tmp_path):
    """The merger knows a model by its loaded networks, not only its name: new weights under a name are new."""
    base = Engine(EngineSettings(device="cpu")).cache.base_pipeline(str(tiny_models["sd1"]))[0]
    first, again = copy.deepcopy(base.unet), copy.deepcopy(base.unet)
    unet_layers = [layer for layer in SD1_LAYERS if layer[0] == "unet"]
    spec = LoraSpec(
        str(write_kohya_lora(tmp_path / "a.safetensors", lora_tensors({"unet": first}, unet_layers), ALPHA))
    )
    merger = LoraMerger()
    assert merger.merge("model", {"unet": first}, [spec], allow_pickle=False)
    assert merger.merge("model", {"unet": again}, [spec], allow_pickle=False)
    assert not merger.merge("model", {"unet": again}, [spec], allow_pickle=False)  # nothing changed since
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters(), strict=True))
    assert not torch.equal(
        again.get_submodule(unet_layers[0][1]).weight, base.unet.get_submodule(unet_layers[0][1]).weight
    )


def test_a_lora_reaches_the_layers_the_accelerator_fused_and_stacked(tiny_models, tmp_path):
    """Merged in place, a LoRA changes the fused QKV and stacked time projections the prepared UNet reads."""
    base = Engine(EngineSettings(device="cpu")).cache.base_pipeline(str(tiny_models["sd1"]))[0]
    plain, prepared = copy.deepcopy(base.unet), copy.deepcopy(base.unet)
    CudaGraphAccelerator()._prepare(prepared)
    assert prepared.down_blocks[0].attentions[0].transformer_blocks[0].attn1.fused_projections
    stacked = prepared.get_submodule(SD1_LAYERS[2][1]).weight  # a view of every block's stacked projections
    assert stacked.data_ptr() != stacked.untyped_storage().data_ptr()
    unet_layers = [layer for layer in SD1_LAYERS if layer[0] == "unet"]
    path = str(write_kohya_lora(tmp_path / "a.safetensors", lora_tensors({"unet": plain}, unet_layers), ALPHA))
    torch.manual_seed(0)
    sample, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, plain.config.cross_attention_dim)
    with torch.no_grad():
        before = prepared(sample, 10, text).sample
        for unet in (plain, prepared):
            LoraMerger().merge("m", {"unet": unet}, [LoraSpec(path, 1.5)], allow_pickle=False)
        expected, got = plain(sample, 10, text).sample, prepared(sample, 10, text).sample
    assert (expected - before).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def bad_loras(networks, tmp_path: Path) -> dict[str, tuple[Path, type[Exception], str]]:
    """LoRA files an artist may pick by mistake, each with the error and words it must give."""
    pickled = tmp_path / "old.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1)}, pickled)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(
        write_kohya_lora(tmp_path / "whole.safetensors", lora_tensors(networks, SD1_LAYERS), ALPHA).read_bytes()[:200]
    )
    too_wide = lora_tensors(networks, SD1_LAYERS[:1])
    too_wide = {key: (torch.randn(RANK, down.shape[1] * 2), up) for key, (down, up) in too_wide.items()}
    full = tmp_path / "full.safetensors"  # LyCORIS' full-weight difference beside a LoRA layer
    full_tensors = lora_tensors(networks, SD1_LAYERS[:1])
    save_file(
        {"lora_unet_conv_in.diff": torch.zeros(32, 4, 3, 3)}
        | load_file(str(write_kohya_lora(full, full_tensors, ALPHA))),
        str(full),
    )
    loha = tmp_path / "loha.safetensors"
    save_file({"lora_unet_a.hada_w1_a": torch.zeros(2, 2), "lora_unet_a.hada_w1_b": torch.zeros(2, 2)}, str(loha))
    stranger = tmp_path / "xl_only.safetensors"
    sdxl_only = "lora_unet_label_emb_0_0"  # SDXL's size embedding: SD1.5 has none
    save_file(
        {f"{sdxl_only}.lora_down.weight": torch.zeros(2, 4), f"{sdxl_only}.lora_up.weight": torch.zeros(4, 2)},
        str(stranger),
    )
    return {
        "missing": (tmp_path / "nowhere.safetensors", ModelError, "not found"),
        "pickled": (pickled, UnsafeModelError, "pickled"),
        "broken": (broken, ModelError, "damaged"),
        "other family (names)": (stranger, ModelError, "another model family"),
        "other family (sizes)": (
            write_kohya_lora(tmp_path / "wide.safetensors", too_wide, ALPHA),
            ModelError,
            "another size",
        ),
        "loha": (loha, ModelError, "LoHa"),
        "full weights": (full, ModelError, "lora_unet_conv_in.diff"),
        "not a lora": (write_kohya_lora(tmp_path / "empty.safetensors", {}, ALPHA), ModelError, "no LoRA layers"),
    }


def test_every_bad_lora_is_refused_with_a_message_and_the_model_is_left_as_it_was(engine, tiny_models, tmp_path):
    networks = networks_of(engine, tiny_models["sd1"])
    good = LoraSpec(str(write_kohya_lora(tmp_path / "good.safetensors", lora_tensors(networks, SD1_LAYERS), ALPHA)))
    engine.generate(request(tiny_models["sd1"], good))
    with_good = weights(networks)
    for name, (path, error, words) in bad_loras(networks, tmp_path).items():
        with pytest.raises(error, match=words):
            engine.generate(request(tiny_models["sd1"], good, LoraSpec(str(path))))
        assert all(torch.equal(tensor, with_good[key]) for key, tensor in weights(networks).items()), name
    plain = engine.generate(request(tiny_models["sd1"])).images[0].pixels
    assert np.isfinite(plain).all()


def test_a_merge_that_fails_midway_is_redone_whole_by_the_next_request(tiny_models, tmp_path, monkeypatch):
    """Out of memory while writing the weights leaves some changed: the next request must not take them as merged."""
    from sd_core import lora as lora_module

    engine = Engine(EngineSettings(device="cpu"))
    networks = networks_of(engine, tiny_models["sd1"])
    plain, before = engine.generate(request(tiny_models["sd1"])).images[0].pixels, weights(networks)
    spec = LoraSpec(str(write_kohya_lora(tmp_path / "a.safetensors", lora_tensors(networks, SD1_LAYERS), ALPHA)))
    written, write = [], lora_module._write

    def failing_write(*args) -> None:
        if len(written) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        written.append(args)
        write(*args)

    monkeypatch.setattr(lora_module, "_write", failing_write)
    with pytest.raises(OutOfMemoryError, match="ran out of memory"):  # the artist's message, not PyTorch's
        engine.generate(request(tiny_models["sd1"], spec))
    monkeypatch.setattr(lora_module, "_write", write)
    assert sum(not torch.equal(tensor, before[key]) for key, tensor in weights(networks).items()) == 2

    np.testing.assert_array_equal(engine.generate(request(tiny_models["sd1"])).images[0].pixels, plain)
    fresh = Engine(EngineSettings(device="cpu"))
    expected = fresh.generate(request(tiny_models["sd1"], spec)).images[0].pixels
    np.testing.assert_array_equal(engine.generate(request(tiny_models["sd1"], spec)).images[0].pixels, expected)


def test_a_pickled_lora_loads_only_when_the_artist_allows_it(tiny_models, tmp_path):
    engine = Engine(EngineSettings(device="cpu", allow_unsafe_pickle=True))
    networks = networks_of(engine, tiny_models["sd1"])
    tensors = lora_tensors(networks, SD1_LAYERS[:1])
    safe = write_kohya_lora(tmp_path / "a.safetensors", tensors, ALPHA)
    torch.save(load_file(str(safe)), tmp_path / "a.pt")
    before = weights(networks)
    engine.generate(request(tiny_models["sd1"], LoraSpec(str(tmp_path / "a.pt"))))
    key = weight_key(networks, *SD1_LAYERS[0])
    down, up = tensors[SD1_LAYERS[0]]
    torch.testing.assert_close(weights(networks)[key], expected_weight(before[key], down, up, 1.0))


def test_loras_are_named_in_the_metadata_as_a1111_writes_them(engine, tiny_models, tmp_path):
    networks = networks_of(engine, tiny_models["sd1"])
    path = str(write_kohya_lora(tmp_path / "Moss Style.safetensors", lora_tensors(networks, SD1_LAYERS), ALPHA))
    image = engine.generate(request(tiny_models["sd1"], LoraSpec(path, 0.65))).images[0]
    assert image.metadata["loras"] == [{"name": "Moss Style", "path": path, "scale": 0.65}]
    assert a1111_parameters(image.metadata).split("\n")[0] == "a mossy stone <lora:Moss Style:0.65>"
    engine.generate(request(tiny_models["sd1"]))


@pytest.mark.parametrize(
    ("lora", "words"), [(LoraSpec(" "), "no file"), (LoraSpec("a.safetensors", math.nan), "number")]
)
def test_a_lora_without_a_file_or_scale_is_refused_before_loading(lora, words):
    with pytest.raises(ValidationError, match=words):
        GenerationRequest(model="m", prompt="p", loras=(lora,)).validate()


def test_layer_by_layer_offloading_is_put_at_rest_before_a_merge(tiny_models, monkeypatch):
    """Low VRAM: each offloaded layer group is sent back to its host copy, the one the GPU loads from, before
    weights change (the H100 run in benchmarks/README.md shows a LoRA lost without it)."""
    from diffusers.hooks import apply_group_offloading
    from diffusers.hooks.group_offloading import ModuleGroup

    from sd_core.offload import rest_offloaded_weights

    unet = copy.deepcopy(Engine(EngineSettings(device="cpu")).cache.base_pipeline(str(tiny_models["sd1"]))[0].unet)
    apply_group_offloading(unet, onload_device=torch.device("cpu"), offload_type="leaf_level")
    rested: list[ModuleGroup] = []
    monkeypatch.setattr(ModuleGroup, "offload_", lambda group: rested.append(group))
    rest_offloaded_weights(unet)
    leaves = [m for m in unet.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    assert {id(module) for group in rested for module in group.modules} >= {id(leaf) for leaf in leaves}
