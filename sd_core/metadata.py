"""Result metadata and PNG files other tools can read.

A1111 stores generation settings in a PNG text chunk named ``parameters``: the prompt, a
``Negative prompt:`` line, then ``Key: value`` pairs. Civitai, ComfyUI loaders and image browsers
read it, so our PNGs carry the same, plus the full settings as JSON in ``sd_core``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import PngImagePlugin

from sd_core.images import to_pil
from sd_core.schedulers import SCHEDULERS

# metadata key -> A1111 label, in A1111's order
_A1111_FIELDS = (
    ("steps", "Steps"),
    ("scheduler", "Sampler"),
    ("guidance", "CFG scale"),
    ("seed", "Seed"),
    ("size", "Size"),
    ("model_hash", "Model hash"),
    ("model", "Model"),
    ("strength", "Denoising strength"),
    ("mask_grow", "Mask grow"),
    ("mask_feather", "Mask blur"),
    ("tiling", "Tiling"),
)


def a1111_parameters(metadata: dict[str, Any]) -> str:
    """Format metadata as A1111's ``parameters`` text."""
    tags = "".join(f" <lora:{lora['name']}:{lora['scale']:g}>" for lora in metadata.get("loras", []))
    lines = [str(metadata.get("prompt", "")) + tags]
    if metadata.get("negative_prompt"):
        lines.append(f"Negative prompt: {metadata['negative_prompt']}")
    pairs = []
    for key, label in _A1111_FIELDS:
        value = metadata.get(key)
        if value is None or value == "" or (key == "tiling" and value == "none"):
            continue
        if key == "scheduler":
            value = SCHEDULERS[str(value)].label if value in SCHEDULERS else value
        pairs.append(f"{label}: {value}")
    for index, control in enumerate(metadata.get("controlnets", [])):
        pairs.append(
            f'ControlNet {index}: "Model: {control["model"]}, Weight: {control["scale"]}, '
            f'Guidance Start: {control["start"]}, Guidance End: {control["end"]}"'
        )
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def parse_a1111_parameters(text: str) -> dict[str, str]:
    """Read back the ``Key: value`` pairs (and prompts) of a ``parameters`` chunk; for tests and tools."""
    lines = text.split("\n")
    result = {"prompt": lines[0]}
    for line in lines[1:]:
        if line.startswith("Negative prompt: "):
            result["negative_prompt"] = line.removeprefix("Negative prompt: ")
        else:
            for part in _split_pairs(line):
                key, _, value = part.partition(": ")
                result[key.strip()] = value.strip().strip('"')
    return result


def _split_pairs(line: str) -> list[str]:
    """Split on commas that are not inside double quotes."""
    parts, current, quoted = [], [], False
    for char in line:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if current:
        parts.append("".join(current))
    return [part for part in parts if part.strip()]


def save_png(pixels: np.ndarray, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write an 8-bit PNG with ``parameters`` (A1111) and ``sd_core`` (JSON) text chunks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(metadata))
    info.add_text("sd_core", json.dumps(metadata, default=str))
    to_pil(pixels).save(path, pnginfo=info)
    return path
