"""Tiny, randomly initialised, seeded Stable Diffusion models for tests and the offline demo.

Why: no weights can be downloaded, yet every loading path (diffusers folders, A1111 single files,
ControlNets) must be exercised for real. The tiny models reuse the bundled real-architecture configs with
only the sizes shrunk, and the real CLIP tokenizer, so a tiny single file goes through exactly the code
path of a real one. Build everything with ``python -m sd_core.testing.tiny_models --out DIR``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from sd_core.models import ldm_layout
from sd_core.models.bundled import Configs, read_configs, write_config_folder

Family = Literal["sd1", "sdxl"]
Variant = Literal["base", "inpaint"]

BUILDER_VERSION = "2"
"""Bump when anything below changes what gets built, so cached builds are rebuilt."""

SEED = 0
# Sizes follow the real models' rules the loader infers them by: CLIP text heads are 64 wide (so one head
# here), SD2/SDXL UNet heads are 64 wide (one per level here), SD1 keeps its 8 heads per level.
_TINY_TEXT_ENCODER = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 1, "num_hidden_layers": 2}
_TINY_TEXT_ENCODER_2 = {**_TINY_TEXT_ENCODER, "hidden_size": 64, "intermediate_size": 128, "projection_dim": 32}
_TINY_VAE = {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1}
_TINY_UNET: dict[str, dict[str, Any]] = {
    "sd1": {"block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32},
    "sdxl": {
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "attention_head_dim": [1, 1],
        "transformer_layers_per_block": [1, 2],
        "cross_attention_dim": _TINY_TEXT_ENCODER["hidden_size"] + _TINY_TEXT_ENCODER_2["hidden_size"],
        # SDXL's pooled text embedding plus six 256-wide size/crop embeddings, as in the real model.
        "projection_class_embeddings_input_dim": _TINY_TEXT_ENCODER_2["projection_dim"] + 6 * 256,
    },
}


def tiny_configs(family: Family = "sd1", variant: Variant = "base") -> Configs:
    """The bundled config folder of ``family``/``variant`` with every size shrunk to a tiny model."""
    configs = copy.deepcopy(read_configs({"sd1": "sd15", "sdxl": "sdxl_base"}[family]))
    unet = configs["unet/config.json"]
    levels = len(_TINY_UNET[family]["block_out_channels"])
    unet["down_block_types"] = unet["down_block_types"][:levels]
    unet["up_block_types"] = unet["up_block_types"][-levels:]
    unet.update(_TINY_UNET[family], in_channels=9 if variant == "inpaint" else 4)
    configs["vae/config.json"].update(_TINY_VAE)
    configs["text_encoder/config.json"].update(_TINY_TEXT_ENCODER)
    if family == "sdxl":
        configs["text_encoder_2/config.json"].update(_TINY_TEXT_ENCODER_2)
    return configs


def _build_components(config_dir: Path, family: Family) -> dict[str, Any]:
    """Instantiate every component from ``config_dir`` with seeded random weights."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    scheduler_config = diffusers.DDIMScheduler.load_config(config_dir / "scheduler")
    torch.manual_seed(SEED)
    components: dict[str, Any] = {
        "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet")),
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae")),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder")),
        "tokenizer": CLIPTokenizer.from_pretrained(config_dir / "tokenizer"),
        "scheduler": getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config),
    }
    if family == "sdxl":
        text_config_2 = CLIPTextConfig.from_pretrained(config_dir / "text_encoder_2")
        components["text_encoder_2"] = CLIPTextModelWithProjection(text_config_2)
        components["tokenizer_2"] = CLIPTokenizer.from_pretrained(config_dir / "tokenizer_2")
    else:
        components.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return components


def build_tiny_pipeline(out_dir: Path, family: Family = "sd1", variant: Variant = "base") -> Path:
    """Save a tiny seeded StableDiffusion(XL)Pipeline as a diffusers folder at ``out_dir``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    with tempfile.TemporaryDirectory() as config_dir:
        components = _build_components(write_config_folder(tiny_configs(family, variant), Path(config_dir)), family)
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipeline_class(**components).save_pretrained(out_dir)
    return out_dir


def build_tiny_controlnet(out_dir: Path, family: Family = "sd1") -> Path:
    """Save ``ControlNetModel.from_unet`` of the tiny 4-channel base UNet of ``family`` at ``out_dir``."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet_config = tiny_configs(family, "base")["unet/config.json"]
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel.from_config(unet_config)
    torch.manual_seed(SEED + 1)
    ControlNetModel.from_unet(unet).save_pretrained(out_dir)
    return out_dir


def _load_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .safetensors file in {folder}, found {len(files)}")
    return load_file(files[0])


def _component_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def single_file_state(diffusers_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of a diffusers pipeline folder (or ControlNet folder) in the original single-file layout."""
    if (diffusers_dir / "model_index.json").is_file():
        return _pipeline_state(diffusers_dir)
    config = _component_config(diffusers_dir)
    if config.get("addition_embed_type"):
        # SDXL ControlNets circulate in the diffusers key layout; diffusers cannot read a control_model.* one.
        return _load_state(diffusers_dir)
    return ldm_layout.unet_to_ldm(_load_state(diffusers_dir), config["layers_per_block"], "control_model.")


def _pipeline_state(diffusers_dir: Path) -> dict[str, torch.Tensor]:
    has_second_encoder = (diffusers_dir / "text_encoder_2").is_dir()
    return ldm_layout.pipeline_to_ldm(
        "sdxl" if has_second_encoder else "sd1",
        _load_state(diffusers_dir / "unet"),
        _component_config(diffusers_dir / "unet")["layers_per_block"],
        _load_state(diffusers_dir / "vae"),
        len(_component_config(diffusers_dir / "vae")["down_block_types"]),
        _load_state(diffusers_dir / "text_encoder"),
        _load_state(diffusers_dir / "text_encoder_2") if has_second_encoder else None,
    )


def write_single_file_checkpoint(diffusers_dir: Path, out_path: Path) -> Path:
    """Write a diffusers pipeline/ControlNet folder as one A1111-layout ``.safetensors`` file."""
    state = {key: value.contiguous() for key, value in single_file_state(diffusers_dir).items()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_path))
    return out_path


class _TouchMarkerOnUnpickle:
    """Unpickling this object creates ``marker``: proof that a loader executed pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def write_pickle_checkpoint(diffusers_dir: Path, out_path: Path, marker: Path) -> Path:
    """Write a ``.ckpt`` (torch pickle) of the pipeline that also creates ``marker`` when unpickled."""
    payload = {"state_dict": single_file_state(diffusers_dir), "trap": _TouchMarkerOnUnpickle(marker)}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out_path)
    return out_path


def _fixture_paths(root: Path) -> dict[str, Path]:
    paths = {name: root / name for name in ("sd1", "sd1_inpaint", "sdxl", "sd1_controlnet", "sdxl_controlnet")}
    paths |= {f"{name}_single": root / "single" / f"tiny_{name}.safetensors" for name in list(paths)}
    return paths


def _build_into(root: Path) -> None:
    paths = _fixture_paths(root)
    build_tiny_pipeline(paths["sd1"], "sd1")
    build_tiny_pipeline(paths["sd1_inpaint"], "sd1", "inpaint")
    build_tiny_pipeline(paths["sdxl"], "sdxl")
    build_tiny_controlnet(paths["sd1_controlnet"], "sd1")
    build_tiny_controlnet(paths["sdxl_controlnet"], "sdxl")
    for name in ("sd1", "sd1_inpaint", "sdxl", "sd1_controlnet", "sdxl_controlnet"):
        write_single_file_checkpoint(paths[name], paths[f"{name}_single"])
    (root / "complete").write_text(BUILDER_VERSION, encoding="utf-8")


def build_all(cache_dir: Path) -> dict[str, Path]:
    """Build every tiny fixture under ``cache_dir``, unless this builder version already did.

    Keys: sd1, sd1_inpaint, sdxl, sd1_controlnet, sdxl_controlnet (diffusers folders) and each name with
    ``_single`` (one A1111-layout ``.safetensors``). Builds in a staging folder renamed into place, so
    test processes running side by side never see half a build.
    """
    root = cache_dir / f"v{BUILDER_VERSION}"
    if not (root / "complete").is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{root.name}-staging-", dir=cache_dir))
        _build_into(staging)
        if root.exists() and not (root / "complete").is_file():
            shutil.rmtree(root, ignore_errors=True)
        try:
            staging.rename(root)
        except OSError:  # another process finished first: its build is identical
            shutil.rmtree(staging, ignore_errors=True)
    return _fixture_paths(root)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the tiny offline test models.")
    parser.add_argument("--out", type=Path, required=True, help="folder to build into")
    args = parser.parse_args()
    started = time.perf_counter()
    for name, path in build_all(args.out).items():
        print(f"{name:24s} {path}")
    print(f"built in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
