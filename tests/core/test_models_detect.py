"""Tokenizer, bundled configs, detection and config inference: everything read from names and shapes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sd_core.errors import ModelError
from sd_core.models import detect_checkpoint
from sd_core.models.bundled import CLIP_TOKENIZER_DIR, read_configs, write_config_folder
from sd_core.models.derive_clip_tokenizer import default_bpe_path, write
from sd_core.models.detect import Shapes, detect_from_shapes, read_safetensors_header
from sd_core.models.infer import controlnet_configs, pipeline_configs
from sd_core.models.ldm_layout import pipeline_to_ldm, unet_to_ldm
from sd_core.testing.tiny_models import tiny_configs


def test_bundled_clip_tokenizer_gives_clip_ids(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    folder = write_config_folder(read_configs("sdxl_base"), tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")("a cat", padding="max_length", max_length=6)
    assert padded_2.input_ids == [49406, 320, 2368, 49407, 0, 0]  # SDXL's second tokenizer pads with "!" (id 0)


def test_derivation_script_reproduces_the_committed_tokenizer_files(tmp_path: Path) -> None:
    write(tmp_path, default_bpe_path())
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (CLIP_TOKENIZER_DIR / name).read_bytes()


@pytest.mark.parametrize(
    ("key", "family", "variant", "kind", "layout"),
    [
        ("sd1_single", "sd1", "base", "pipeline", "ldm"),
        ("sd1_inpaint_single", "sd1", "inpaint", "pipeline", "ldm"),
        ("sdxl_single", "sdxl", "base", "pipeline", "ldm"),
        ("sd1_controlnet_single", "sd1", "base", "controlnet", "ldm"),
        ("sdxl_controlnet_single", "sdxl", "base", "controlnet", "diffusers"),
    ],
)
def test_detects_tiny_single_files(tiny_models, tmp_path, key, family, variant, kind, layout) -> None:
    renamed = tmp_path / "totally_sdxl_inpainting_v2.safetensors"  # the name must not matter
    renamed.symlink_to(tiny_models[key])
    info = detect_checkpoint(renamed)
    assert (info.family, info.variant, info.prediction, info.kind, info.layout) == (
        family,
        variant,
        "epsilon",
        kind,
        layout,
    )


def test_inferred_configs_of_tiny_single_files_match_the_tiny_folders(tiny_models) -> None:
    for key, family, variant in (("sd1", "sd1", "base"), ("sd1_inpaint", "sd1", "inpaint"), ("sdxl", "sdxl", "base")):
        header = read_safetensors_header(tiny_models[f"{key}_single"])
        assert pipeline_configs(header.shapes, detect_from_shapes(header.shapes)) == tiny_configs(family, variant)
    for key in ("sd1_controlnet", "sdxl_controlnet"):
        header = read_safetensors_header(tiny_models[f"{key}_single"])
        inferred = controlnet_configs(header.shapes, detect_from_shapes(header.shapes))["config.json"]
        saved = json.loads((tiny_models[key] / "config.json").read_text())
        assert {name: saved[name] for name in inferred if not name.startswith("_")} == {
            name: value for name, value in inferred.items() if not name.startswith("_")
        }


def _shapes(state: dict[str, torch.Tensor]) -> Shapes:
    return {key: tuple(value.shape) for key, value in state.items()}


def _real_size_pipeline_shapes(bundle: str, family: str) -> Shapes:
    """The tensor shapes of a real-size single file of ``bundle``, built on the meta device (no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = read_configs(bundle)
    text_config = CLIPTextConfig(**configs["text_encoder/config.json"])
    if family == "sd2":  # the file keeps OpenCLIP's last layer, which SD2 (and diffusers) skip
        text_config.num_hidden_layers += 1
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet/config.json"])
        vae = AutoencoderKL.from_config(configs["vae/config.json"])
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = None
        if family == "sdxl":
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2/config.json"]))
    state = pipeline_to_ldm(
        family,
        unet.state_dict(),
        unet.config.layers_per_block,
        vae.state_dict(),
        len(vae.config.down_block_types),
        text_encoder.state_dict(),
        text_encoder_2.state_dict() if text_encoder_2 is not None else None,
    )
    return _shapes(state)


@pytest.mark.parametrize(
    ("bundle", "family", "variant", "prediction", "metadata"),
    [
        ("sd15", "sd1", "base", "epsilon", {}),
        ("sd15_inpaint", "sd1", "inpaint", "epsilon", {}),
        ("sd2_768_v", "sd2", "base", "v_prediction", {}),
        ("sd2_base", "sd2", "base", "epsilon", {"modelspec.prediction_type": "epsilon"}),
        ("sdxl_base", "sdxl", "base", "epsilon", {}),
        ("sdxl_inpaint", "sdxl", "inpaint", "epsilon", {}),
    ],
)
def test_real_size_shapes_infer_exactly_the_bundled_config(bundle, family, variant, prediction, metadata) -> None:
    shapes = _real_size_pipeline_shapes(bundle, family)
    info = detect_from_shapes(shapes, metadata)
    assert (info.family, info.variant, info.prediction, info.kind) == (family, variant, prediction, "pipeline")
    assert pipeline_configs(shapes, info) == read_configs(bundle)


@pytest.mark.parametrize(("bundle", "family"), [("controlnet_sd15", "sd1"), ("controlnet_sdxl", "sdxl")])
def test_real_size_controlnet_shapes_infer_exactly_the_bundled_config(bundle: str, family: str) -> None:
    from diffusers import ControlNetModel

    config = read_configs(bundle)["config.json"]
    with torch.device("meta"):
        state = ControlNetModel.from_config(config).state_dict()
    layouts = {"diffusers": _shapes(state), "ldm": _shapes(unet_to_ldm(state, 2, "control_model."))}
    for layout, shapes in layouts.items():
        info = detect_from_shapes(shapes)
        assert (info.family, info.kind, info.layout) == (family, "controlnet", layout)
        assert controlnet_configs(shapes, info) == read_configs(bundle)


def test_v_prediction_markers() -> None:
    shapes = _real_size_pipeline_shapes("sd15", "sd1")
    assert detect_from_shapes(shapes | {"v_pred": ()}).prediction == "v_prediction"
    assert detect_from_shapes(shapes, {"modelspec.architecture": "stable-diffusion-v1-v"}).prediction == "v_prediction"
    configs = pipeline_configs(shapes, detect_from_shapes(shapes | {"v_pred": ()}))
    assert configs["scheduler/scheduler_config.json"]["prediction_type"] == "v_prediction"


def _write_header_only(path: Path, header: dict) -> Path:
    data = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(data)) + data)
    return path


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"abc",
        b"\x00" * 64,
        bytes(range(256)) * 10,
        struct.pack("<Q", 10**15) + b"{}",
        b"\x08" + b"\x00" * 7 + b"{bad json",
    ],
)
def test_a_broken_file_is_reported_as_not_valid_safetensors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=r"'model.safetensors' is not a valid \.safetensors file .*incompletely"):
        detect_checkpoint(path)


def test_a_truncated_download_is_reported(tiny_models, tmp_path: Path) -> None:
    data = tiny_models["sd1_single"].read_bytes()
    path = tmp_path / "half.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="incompletely downloaded"):
        detect_checkpoint(path)


@pytest.mark.parametrize(
    ("tensors", "what"),
    [
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 32)}, "a LoRA"),
        ({"encoder.down.0.block.0.conv1.weight": (4, 4, 3, 3), "decoder.conv_out.weight": (3, 4, 3, 3)}, "a VAE"),
        ({"emb_params": (2, 768)}, "a textual-inversion embedding"),
        ({"conv_in.weight": (4, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (4, 4, 3, 3)}, "a UNet on its own"),
        ({"something.else": (1,)}, "not a Stable Diffusion checkpoint"),
    ],
)
def test_a_file_of_another_kind_says_what_it_is(tmp_path: Path, tensors: dict, what: str) -> None:
    path = tmp_path / "thing.safetensors"
    save_file({key: torch.zeros(shape) for key, shape in tensors.items()}, str(path))
    with pytest.raises(ModelError, match=f"'thing.safetensors' is {what}.*not a Stable Diffusion model or ControlNet"):
        detect_checkpoint(path)


def test_instruct_pix2pix_and_refiners_are_refused_with_reasons() -> None:
    shapes = _real_size_pipeline_shapes("sd15", "sd1")
    with pytest.raises(ModelError, match=r"8 input channels.*InstructPix2Pix"):
        detect_from_shapes(shapes | {"model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3)})
    refiner = {key: shape for key, shape in shapes.items() if not key.startswith("cond_stage_model.")}
    refiner["conditioner.embedders.1.model.positional_embedding"] = (77, 1280)
    with pytest.raises(ModelError, match="SDXL refiner"):
        detect_from_shapes(refiner)
    with pytest.raises(ModelError, match="no text encoder"):
        detect_from_shapes({key: shape for key, shape in refiner.items() if not key.startswith("conditioner.")})


def test_header_only_file_with_missing_data_is_truncated(tmp_path: Path) -> None:
    header = {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    with pytest.raises(ModelError, match="not a valid"):
        detect_checkpoint(_write_header_only(tmp_path / "short.safetensors", header))


@pytest.mark.parametrize("bundle", ["sd15", "sdxl_base"])
def test_real_size_layout_converts_back_through_diffusers_own_converters(bundle: str) -> None:
    """The single-file layout we write (and read shapes from) is the one diffusers' converters expect."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from sd_core.models.ldm_layout import vae_to_ldm

    configs = read_configs(bundle)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet/config.json"])
        vae = AutoencoderKL.from_config(configs["vae/config.json"])
    for model, to_ldm, convert in (
        (unet, lambda state: unet_to_ldm(state, 2, "model.diffusion_model."), convert_ldm_unet_checkpoint),
        (vae, lambda state: vae_to_ldm(state, 4), convert_ldm_vae_checkpoint),
    ):
        state = model.state_dict()
        converted = convert(to_ldm(state), dict(model.config))
        assert _shapes(converted) == _shapes(state)
