"""Effective config folders: the bundled real-architecture config, with every size read off the tensors.

Why: a single file carries weights but no config. Taking the family's bundled config and overriding what
the shapes reveal (channels, levels, layers, widths, vocabulary) makes real checkpoints, odd finetunes and
the tiny test checkpoints load through one code path. What shapes cannot reveal (head counts, sample size,
scheduler) stays bundled, except attention heads, which follow the real models' rules: SD1 uses 8 heads
per level, SD2/SDXL UNets and every CLIP text encoder use 64-wide heads.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from sd_core.errors import ModelError
from sd_core.models import ldm_layout
from sd_core.models.bundled import CONTROLNET_CONFIGS, PIPELINE_CONFIGS, Configs, read_configs
from sd_core.models.detect import (
    CLIP_VOCAB_SIZE,
    CONTROLNET_PREFIX,
    SD1_TEXT_PREFIX,
    SD2_TEXT_PREFIX,
    SDXL_TEXT_2_PREFIX,
    SDXL_TEXT_PREFIX,
    UNET_PREFIX,
    CheckpointInfo,
    Shapes,
)

HEAD_WIDTH = 64


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) over all keys."""
    return sorted({int(match[1]) for key in shapes if (match := re.match(pattern, key))})


def _unet_sizes(shapes: Shapes, prefix: str, bundled: dict[str, Any]) -> dict[str, Any]:
    """UNet/ControlNet config values read from LDM-layout keys under ``prefix``."""
    p = re.escape(prefix)
    conv_in = shapes[f"{prefix}input_blocks.0.0.weight"]
    downsamples = _indices(shapes, rf"{p}input_blocks\.(\d+)\.0\.op\.weight")
    input_blocks = _indices(shapes, rf"{p}input_blocks\.(\d+)\.")
    layers_per_block = downsamples[0] - 1 if downsamples else max(input_blocks)
    stride = layers_per_block + 1
    levels = (max(input_blocks) + 1) // stride
    channels, has_attention, transformer_layers = [], [], []
    cross_attention_dim, linear_projection = None, None
    for level in range(levels):
        first = f"{prefix}input_blocks.{1 + level * stride}"
        channels.append(shapes[f"{first}.0.out_layers.3.weight"][0])
        blocks = _indices(shapes, rf"{re.escape(first)}\.1\.transformer_blocks\.(\d+)\.")
        has_attention.append(bool(blocks))
        transformer_layers.append(len(blocks) or 1)
        if blocks and cross_attention_dim is None:
            cross_attention_dim = shapes[f"{first}.1.transformer_blocks.0.attn2.to_k.weight"][1]
            linear_projection = len(shapes[f"{first}.1.proj_in.weight"]) == 2
    sizes: dict[str, Any] = {
        "in_channels": conv_in[1],
        "block_out_channels": channels,
        "layers_per_block": layers_per_block,
        "down_block_types": ["CrossAttnDownBlock2D" if attention else "DownBlock2D" for attention in has_attention],
    }
    if cross_attention_dim is not None:
        sizes |= {"cross_attention_dim": cross_attention_dim, "use_linear_projection": linear_projection}
    if "up_block_types" in bundled:
        sizes["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)]
        sizes["out_channels"] = shapes[f"{prefix}out.2.weight"][0]
    if "transformer_layers_per_block" in bundled or any(count != 1 for count in transformer_layers):
        sizes["transformer_layers_per_block"] = transformer_layers
    if isinstance(bundled["attention_head_dim"], list):
        sizes["attention_head_dim"] = [max(1, width // HEAD_WIDTH) for width in channels]
    label = shapes.get(f"{prefix}label_emb.0.0.weight")
    if label is not None:
        sizes["projection_class_embeddings_input_dim"] = label[1]
    hint = _indices(shapes, rf"{p}input_hint_block\.(\d+)\.weight")
    if hint:
        hint_widths = [shapes[f"{prefix}input_hint_block.{index}.weight"][0] for index in hint[:-1]]
        sizes["conditioning_embedding_out_channels"] = hint_widths[0::2]
    return sizes


def _vae_sizes(shapes: Shapes) -> dict[str, Any]:
    prefix = "first_stage_model." if "first_stage_model.encoder.conv_in.weight" in shapes else "vae."
    p = re.escape(prefix)
    levels = _indices(shapes, rf"{p}encoder\.down\.(\d+)\.")
    if not levels:
        raise ModelError("The checkpoint has no VAE (first_stage_model): it is not a complete Stable Diffusion model.")
    return {
        "block_out_channels": [shapes[f"{prefix}encoder.down.{level}.block.0.conv1.weight"][0] for level in levels],
        "layers_per_block": len(_indices(shapes, rf"{p}encoder\.down\.0\.block\.(\d+)\.")),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "in_channels": shapes[f"{prefix}encoder.conv_in.weight"][1],
        "out_channels": shapes[f"{prefix}decoder.conv_out.weight"][0],
        "latent_channels": shapes[f"{prefix}decoder.conv_in.weight"][1],
    }


def _text_sizes(vocab: int, width: int, positions: int, layers: int, intermediate: int) -> dict[str, Any]:
    if vocab != CLIP_VOCAB_SIZE:
        raise ModelError(
            f"The checkpoint's text encoder has a vocabulary of {vocab} tokens, not CLIP's {CLIP_VOCAB_SIZE}: "
            "this kind of model is not supported."
        )
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "max_position_embeddings": positions,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate,
        "num_attention_heads": max(1, width // HEAD_WIDTH),
    }


def _clip_sizes(shapes: Shapes, prefix: str) -> dict[str, Any]:
    """OpenAI-CLIP text encoder stored in the Hugging Face layout under ``prefix + 'text_model.'``."""
    p = prefix + "text_model."
    vocab, width = shapes[f"{p}embeddings.token_embedding.weight"]
    return _text_sizes(
        vocab,
        width,
        shapes[f"{p}embeddings.position_embedding.weight"][0],
        len(_indices(shapes, rf"{re.escape(p)}encoder\.layers\.(\d+)\.")),
        shapes[f"{p}encoder.layers.0.mlp.fc1.weight"][0],
    )


def _open_clip_sizes(shapes: Shapes, prefix: str, dropped_layers: int) -> dict[str, Any]:
    """OpenCLIP text encoder; SD2 uses the penultimate layer, so diffusers drops its last one."""
    vocab, width = shapes[f"{prefix}token_embedding.weight"]
    sizes = _text_sizes(
        vocab,
        width,
        shapes[f"{prefix}positional_embedding"][0],
        len(_indices(shapes, rf"{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")) - dropped_layers,
        shapes[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"][0],
    )
    projection = shapes.get(f"{prefix}text_projection")
    if projection is not None and dropped_layers == 0:
        sizes["projection_dim"] = projection[1]
    return sizes


def _bundled_pipeline_name(info: CheckpointInfo) -> str:
    for key in ((info.family, info.variant, info.prediction), (info.family, "base", info.prediction)):
        if key in PIPELINE_CONFIGS:
            return PIPELINE_CONFIGS[key]
    return PIPELINE_CONFIGS[(info.family, "base", "epsilon")]


def pipeline_configs(shapes: Shapes, info: CheckpointInfo) -> Configs:
    """The effective config folder for a whole-pipeline single file."""
    configs = copy.deepcopy(read_configs(_bundled_pipeline_name(info)))
    unet = configs["unet/config.json"]
    unet.update(_unet_sizes(shapes, UNET_PREFIX, unet))
    configs["vae/config.json"].update(_vae_sizes(shapes))
    configs["scheduler/scheduler_config.json"]["prediction_type"] = info.prediction
    if info.family == "sd1":
        configs["text_encoder/config.json"].update(_clip_sizes(shapes, SD1_TEXT_PREFIX))
    elif info.family == "sd2":
        configs["text_encoder/config.json"].update(_open_clip_sizes(shapes, SD2_TEXT_PREFIX, dropped_layers=1))
    else:
        configs["text_encoder/config.json"].update(_clip_sizes(shapes, SDXL_TEXT_PREFIX))
        configs["text_encoder_2/config.json"].update(_open_clip_sizes(shapes, SDXL_TEXT_2_PREFIX, dropped_layers=0))
    return configs


def controlnet_configs(shapes: Shapes, info: CheckpointInfo) -> Configs:
    """The effective config folder (just ``config.json``) for a ControlNet single file, either layout."""
    if info.family not in CONTROLNET_CONFIGS:
        raise ModelError(f"{info.family.upper()} ControlNets are not supported: use an SD1.5 or SDXL ControlNet.")
    configs = copy.deepcopy(read_configs(CONTROLNET_CONFIGS[info.family]))
    config = configs["config.json"]
    if info.layout == "diffusers":
        layers_per_block = len(_indices(shapes, r"down_blocks\.0\.resnets\.(\d+)\."))
        shapes = ldm_layout.unet_to_ldm(shapes, layers_per_block, "")
        prefix = ""
    else:
        prefix = CONTROLNET_PREFIX if any(key.startswith(CONTROLNET_PREFIX) for key in shapes) else ""
    config.update(_unet_sizes(shapes, prefix, config))
    return configs
