"""The config folders that ship with the add-on, so single files load with no hub access.

Each folder under ``configs/`` holds a real architecture's diffusers configs (no weights). The CLIP
vocabulary is stored once in ``configs/clip_tokenizer`` and copied into every tokenizer folder when a
config folder is materialised; see ``configs/README.md``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

CONFIG_ROOT = Path(__file__).parent / "configs"
CLIP_TOKENIZER_DIR = CONFIG_ROOT / "clip_tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt")

# (family, variant, prediction) -> bundled pipeline folder.
PIPELINE_CONFIGS: dict[tuple[str, str, str], str] = {
    ("sd1", "base", "epsilon"): "sd15",
    ("sd1", "inpaint", "epsilon"): "sd15_inpaint",
    ("sd2", "base", "epsilon"): "sd2_base",
    ("sd2", "base", "v_prediction"): "sd2_768_v",
    ("sdxl", "base", "epsilon"): "sdxl_base",
    ("sdxl", "inpaint", "epsilon"): "sdxl_inpaint",
}
CONTROLNET_CONFIGS: dict[str, str] = {"sd1": "controlnet_sd15", "sdxl": "controlnet_sdxl"}

Configs = dict[str, dict[str, Any]]
"""Relative JSON path inside a config folder (e.g. ``unet/config.json``) -> its content."""


def read_configs(name: str) -> Configs:
    """Every JSON file of the bundled folder ``name``, keyed by its relative path."""
    folder = CONFIG_ROOT / name
    if not folder.is_dir():
        raise KeyError(f"no bundled config folder named {name!r}")
    return {
        path.relative_to(folder).as_posix(): json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(folder.rglob("*.json"))
    }


def write_config_folder(configs: Configs, out_dir: Path) -> Path:
    """Write ``configs`` as a diffusers config folder, adding the CLIP vocabulary to every tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for relative, content in configs.items():
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if target.name == "tokenizer_config.json":
            for file_name in TOKENIZER_FILES:
                shutil.copyfile(CLIP_TOKENIZER_DIR / file_name, target.parent / file_name)
    return out_dir
