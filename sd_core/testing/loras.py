"""Random LoRA files in the kohya / A1111 layout, for tests and benchmarks (no LoRA can be downloaded here).

One writer serves the unit tests (a few chosen layers), the Blender tests and ``benchmarks/lora_benchmark.py``
(every layer kohya's scripts train), so all of them write the layout sd_core reads the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

# The key prefix of each network's layers in a kohya file (SDXL's layout; SD1.5's first encoder reads the same).
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}

Layer = tuple[str, str]  # (network, module path as a LoRA file names it)


def random_updates(
    shapes: Mapping[Layer, torch.Size], rank: int, seed: int = 0
) -> dict[Layer, tuple[torch.Tensor, ...]]:
    """Random float32 (down, up) weights of ``rank`` for layers whose weights have ``shapes``, shaped like kohya's
    (a convolution's down as a convolution of the same kernel, its up as a 1x1 one)."""
    generator = torch.Generator().manual_seed(seed)
    updates = {}
    for layer, shape in shapes.items():
        down = torch.randn((rank, *shape[1:]), generator=generator)
        up = torch.randn((shape[0], rank, *([1] * (len(shape) - 2))), generator=generator)
        updates[layer] = (down, up)
    return updates


def write_kohya_lora(
    out: Path, updates: Mapping[Layer, tuple[torch.Tensor, ...]], alpha: float, names: Mapping[str, str] | None = None
) -> Path:
    """Write ``updates`` as ``lora_unet_<path with underscores>.lora_down.weight``, ``.lora_up.weight`` and
    ``.alpha``; ``names`` gives a module path another layer name (SDXL's original ``input_blocks...`` ones)."""
    from safetensors.torch import save_file

    state = {}
    for (network, path), (down, up) in updates.items():
        stem = (names or {}).get(path) or KOHYA_PREFIXES[network] + path.replace(".", "_")
        state |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up, f"{stem}.alpha": torch.tensor(alpha)}
    save_file(state, str(out))
    return out
