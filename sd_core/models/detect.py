"""What a checkpoint is, from its tensor names and shapes alone (never from its file name).

Why: artists rename files freely and download half-finished ones; reading the ``.safetensors`` header is
cheap (no weights are read) and tells the family, the variant and the kind reliably, so a wrong or broken
file is reported in one sentence before any loading starts.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sd_core.errors import ModelError

Family = Literal["sd1", "sd2", "sdxl"]
Variant = Literal["base", "inpaint"]
Prediction = Literal["epsilon", "v_prediction"]
Kind = Literal["pipeline", "controlnet"]
Layout = Literal["ldm", "diffusers"]
Shapes = dict[str, tuple[int, ...]]

UNET_PREFIX = "model.diffusion_model."
CONTROLNET_PREFIX = "control_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT_2_PREFIX = "conditioner.embedders.1.model."
CLIP_VOCAB_SIZE = 49408
_MAX_HEADER_BYTES = 100 * 1024 * 1024
# Keys some trainers (ComfyUI, kohya) add to mark v-prediction / zero-terminal-SNR models.
_V_PREDICTION_MARKERS = ("v_pred", "edm_vpred.sigma_max")


@dataclass(frozen=True)
class CheckpointInfo:
    """A single-file checkpoint as detected from its header."""

    family: Family
    variant: Variant
    prediction: Prediction
    kind: Kind
    layout: Layout = "ldm"


@dataclass(frozen=True)
class SafetensorsHeader:
    shapes: Shapes
    metadata: dict[str, str] = field(default_factory=dict)


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Tensor names/shapes and metadata of a ``.safetensors`` file, checking it is complete."""
    broken = ModelError(
        f"'{path.name}' is not a valid .safetensors file (it may be corrupt or incompletely downloaded): "
        "download it again."
    )
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise broken
            (header_length,) = struct.unpack("<Q", prefix)
            if not 2 <= header_length <= min(_MAX_HEADER_BYTES, size - 8):
                raise broken
            header = json.loads(handle.read(header_length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise broken from error
    except OSError as error:
        raise ModelError(f"Could not read '{path}': {error.strerror or error}.") from error
    if not isinstance(header, dict):
        raise broken
    metadata = header.pop("__metadata__", None) or {}
    shapes: Shapes = {}
    data_end = 0
    try:
        for name, entry in header.items():
            shapes[name] = tuple(int(side) for side in entry["shape"])
            data_end = max(data_end, int(entry["data_offsets"][1]))
    except (TypeError, KeyError, IndexError, ValueError) as error:
        raise broken from error
    if 8 + header_length + data_end > size:
        raise broken
    return SafetensorsHeader(shapes, {str(key): str(value) for key, value in metadata.items()})


def _describe_other(shapes: Shapes) -> str:
    """Name what a non-checkpoint file most likely is, for the error message."""
    keys = list(shapes)
    if any("lora" in key.lower() or key.startswith(("lora_unet_", "lora_te")) for key in keys):
        return "a LoRA"
    if any(key in ("emb_params", "clip_l", "clip_g") or key.startswith("string_to_param") for key in keys):
        return "a textual-inversion embedding"
    if any(re.match(r"(first_stage_model\.|vae\.)?(encoder|decoder)\.(down|up)(_blocks)?\.0\.", key) for key in keys):
        return "a VAE"
    if "conv_in.weight" in shapes and any(key.startswith("down_blocks.") for key in keys):
        return "a UNet on its own (a diffusers component, not a whole model)"
    if any(key.startswith(("text_model.", "cond_stage_model.", "conditioner.")) for key in keys):
        return "a text encoder on its own"
    return "not a Stable Diffusion checkpoint"


def _controlnet_layout(shapes: Shapes) -> Layout | None:
    if any(
        key.startswith(CONTROLNET_PREFIX + "input_hint_block.") or key.startswith("input_hint_block.") for key in shapes
    ):
        return "ldm"
    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        return "diffusers"
    return None


def _variant(in_channels: int, what: str) -> Variant:
    if in_channels == 4:
        return "base"
    if in_channels == 9:
        return "inpaint"
    extra = " (an InstructPix2Pix model)" if in_channels == 8 else ""
    raise ModelError(
        f"{what} has a UNet with {in_channels} input channels{extra}: only 4 (normal) or 9 (inpainting) are supported."
    )


def _prediction(family: Family, shapes: Shapes, metadata: dict[str, str]) -> Prediction:
    """v-prediction from explicit markers; otherwise SD2 defaults to v (its common 768-v form), others to epsilon.

    SD2's 512 epsilon base and 768 v-prediction models have identical tensors. A1111 decides by running the
    model once; we read the ModelSpec metadata (``modelspec.prediction_type`` / ``modelspec.architecture``)
    when present and otherwise assume v-prediction, as diffusers does for SD2 files without a step count.
    """
    if any(marker in shapes for marker in _V_PREDICTION_MARKERS):
        return "v_prediction"
    declared = metadata.get("modelspec.prediction_type", "").lower()
    architecture = metadata.get("modelspec.architecture", "").lower()
    if declared in ("v", "v_prediction", "v-prediction") or architecture.endswith("-v"):
        return "v_prediction"
    if declared == "epsilon":
        return "epsilon"
    return "v_prediction" if family == "sd2" else "epsilon"


def _pipeline_family(shapes: Shapes, what: str) -> Family:
    keys = shapes.keys()
    if any(key.startswith(SDXL_TEXT_2_PREFIX) for key in keys):
        if not any(key.startswith(SDXL_TEXT_PREFIX) for key in keys):
            raise ModelError(f"{what} is an SDXL refiner: use an SDXL base model (refiners are not supported).")
        return "sdxl"
    if any(key.startswith(SD2_TEXT_PREFIX) for key in keys):
        return "sd2"
    if any(key.startswith(SD1_TEXT_PREFIX) for key in keys):
        return "sd1"
    if UNET_PREFIX + "label_emb.0.0.weight" in shapes:
        return "sdxl"
    raise ModelError(f"{what} has no text encoder: it is a UNet-only file, not a complete Stable Diffusion model.")


def _controlnet_family(shapes: Shapes, layout: Layout) -> Family:
    if layout == "diffusers":
        return "sdxl" if "add_embedding.linear_1.weight" in shapes else "sd1"
    prefix = CONTROLNET_PREFIX if any(key.startswith(CONTROLNET_PREFIX) for key in shapes) else ""
    if prefix + "label_emb.0.0.weight" in shapes:
        return "sdxl"
    cross_attention = [shape[-1] for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")]
    return "sd2" if cross_attention and cross_attention[0] == 1024 else "sd1"


def detect_from_shapes(
    shapes: Shapes, metadata: dict[str, str] | None = None, name: str = "This file"
) -> CheckpointInfo:
    """Classify a checkpoint from its tensor names and shapes (see ``detect_checkpoint``)."""
    metadata = metadata or {}
    controlnet_layout = _controlnet_layout(shapes)
    if controlnet_layout is not None:
        family = _controlnet_family(shapes, controlnet_layout)
        return CheckpointInfo(family, "base", "epsilon", "controlnet", controlnet_layout)
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        raise ModelError(f"{name} is {_describe_other(shapes)}, not a Stable Diffusion model or ControlNet.")
    family = _pipeline_family(shapes, name)
    return CheckpointInfo(family, _variant(conv_in[1], name), _prediction(family, shapes, metadata), "pipeline")


def detect_checkpoint(path: Path) -> CheckpointInfo:
    """Family (sd1/sd2/sdxl), variant, prediction type and kind of a ``.safetensors`` checkpoint.

    Raises ``ModelError`` for files that are corrupt, truncated, or not a whole model/ControlNet.
    """
    path = Path(path)
    header = read_safetensors_header(path)
    return detect_from_shapes(header.shapes, header.metadata, f"'{path.name}'")
