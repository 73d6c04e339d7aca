"""Diffusers -> original (CompVis/A1111) single-file key layout: the inverse of diffusers' own conversion.

Why: artists mostly have single ``.safetensors`` files in this layout. Tests write tiny checkpoints (and
shape-only real-size ones) in exactly that layout to prove the loader reads them back, and the loader maps
diffusers-layout ControlNet files onto it so one set of rules infers every architecture. ``unet_to_ldm``
passes values through untouched (tensors or plain shapes); the others need tensors (meta tensors work).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

import torch

StateDict = dict[str, torch.Tensor]
Value = TypeVar("Value")

_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "controlnet_cond_embedding.conv_in": "input_hint_block.0",
    "controlnet_cond_embedding.conv_out": "input_hint_block.14",
    "controlnet_mid_block": "middle_block_out.0",
}
_VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    layer, _, tail = rest.partition(".")
    return f"{_RESNET_NAMES[layer]}.{tail}"


def _unet_key(key: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    """One diffusers UNet/ControlNet key in the LDM ``input_blocks``/``middle_block``/``output_blocks`` layout."""
    stride = layers_per_block + 1
    prefix, _, param = key.rpartition(".")
    if prefix in _UNET_FIXED:
        return f"{_UNET_FIXED[prefix]}.{param}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = 1 + block * stride + layer
        return f"input_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(match[1]) * stride + layers_per_block}.0.op.{match[2]}"
    if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(match[1])}.{_resnet(match[2])}"
    if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{match[1]}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = block * stride + layer
        return f"output_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(match[1])
        slot = 2 if block in up_blocks_with_attention else 1
        return f"output_blocks.{block * stride + layers_per_block}.{slot}.conv.{match[2]}"
    if match := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
        return f"zero_convs.{match[1]}.0.{match[2]}"
    if match := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key):
        return f"input_hint_block.{2 * (int(match[1]) + 1)}.{match[2]}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def unet_to_ldm(state: Mapping[str, Value], layers_per_block: int, prefix: str) -> dict[str, Value]:
    """A diffusers UNet2DConditionModel or ControlNetModel state dict in the LDM layout, keys under ``prefix``."""
    up_blocks_with_attention = {
        int(match[1]) for key in state if (match := re.match(r"up_blocks\.(\d+)\.attentions\.", key))
    }
    return {prefix + _unet_key(key, layers_per_block, up_blocks_with_attention): value for key, value in state.items()}


def _vae_key(key: str, num_blocks: int) -> str:
    if match := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{match[1]}.norm_out.{match[2]}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = num_blocks - 1 - int(match[1])
        return f"decoder.up.{level}.block.{match[2]}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(match[1])}.upsample.conv.{match[2]}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{match[3]}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{match[1]}.mid.attn_1.{_VAE_ATTENTION_NAMES[match[2]]}.{match[3]}"
    return key


def vae_to_ldm(state: Mapping[str, torch.Tensor], num_blocks: int, prefix: str = "first_stage_model.") -> StateDict:
    """A diffusers AutoencoderKL state dict in the LDM layout; attention projections become 1x1 convs."""
    converted = {}
    for key, value in state.items():
        ldm_key = _vae_key(key, num_blocks)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        converted[prefix + ldm_key] = value
    return converted


def clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """An OpenAI-CLIP text encoder (HF layout) under ``prefix`` + ``text_model.``, as SD1/SDXL files store it."""
    return {prefix + (key if key.startswith("text_model.") else f"text_model.{key}"): v for key, v in state.items()}


_OPEN_CLIP_LAYER_NAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def open_clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """A CLIPTextModelWithProjection in OpenCLIP's layout (fused in_proj, transposed projection), under ``prefix``."""
    state = {key.removeprefix("text_model."): value for key, value in state.items()}
    converted: StateDict = {
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in state:
        converted[prefix + "text_projection"] = state.pop("text_projection.weight").T.contiguous()
    layers = sorted({int(match[1]) for key in state if (match := re.match(r"encoder\.layers\.(\d+)\.", key))})
    for layer in layers:
        source = f"encoder.layers.{layer}."
        target = f"{prefix}transformer.resblocks.{layer}."
        for param in ("weight", "bias"):
            projections = [state.pop(f"{source}self_attn.{name}_proj.{param}") for name in "qkv"]
            converted[f"{target}attn.in_proj_{param}"] = torch.cat(projections)
        for key in [key for key in state if key.startswith(source)]:
            name, _, param = key.removeprefix(source).rpartition(".")
            converted[f"{target}{_OPEN_CLIP_LAYER_NAMES[name]}.{param}"] = state.pop(key)
    if state:
        raise KeyError(f"no OpenCLIP name for keys {sorted(state)[:5]}")
    return converted


def pipeline_to_ldm(
    family: str,
    unet: Mapping[str, torch.Tensor],
    unet_layers_per_block: int,
    vae: Mapping[str, torch.Tensor],
    vae_levels: int,
    text_encoder: Mapping[str, torch.Tensor],
    text_encoder_2: Mapping[str, torch.Tensor] | None = None,
) -> StateDict:
    """A whole SD1 / SD2 / SDXL pipeline's state dicts as one single-file checkpoint state dict."""
    state = unet_to_ldm(unet, unet_layers_per_block, "model.diffusion_model.") | vae_to_ldm(vae, vae_levels)
    if family == "sd1":
        return state | clip_to_ldm(text_encoder, "cond_stage_model.transformer.")
    if family == "sd2":
        return state | open_clip_to_ldm(text_encoder, "cond_stage_model.model.")
    if family == "sdxl" and text_encoder_2 is not None:
        state |= clip_to_ldm(text_encoder, "conditioner.embedders.0.transformer.")
        return state | open_clip_to_ldm(text_encoder_2, "conditioner.embedders.1.model.")
    raise ValueError(f"unknown family {family!r} (or SDXL without its second text encoder)")
