"""Results into Blender: a PNG with metadata on disk, a Blender image per result, history, previews.

Nothing here overwrites or deletes the user's data: every result gets a new, uniquely named image
and a new file; the only image reused is the add-on's own "SD Preview", which is never packed.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from sd_core.metadata import save_png
from sd_core.request import GeneratedImage

from .properties import SDSettings

PREVIEW_IMAGE = "SD Preview"


def output_folder(settings: SDSettings) -> Path:
    """The settings' folder; a relative '//' path needs a saved .blend, else the temp folder is used."""
    folder = settings.output_dir or "//sd_output/"
    if folder.startswith("//") and not bpy.data.filepath:
        return Path(tempfile.gettempdir()) / "sd_output"
    return Path(bpy.path.abspath(folder))


def result_name(metadata: dict[str, object]) -> str:
    """'SD wooden crate 1234': prompt words and seed, short enough for Blender's name fields."""
    words = re.sub(r"[^\w\s-]", "", str(metadata.get("prompt", ""))).split()
    stem = " ".join(words)[:40].strip() or "untitled"
    return f"SD {stem} {metadata.get('seed', '')}".strip()


def _unique_path(folder: Path, name: str) -> Path:
    base = re.sub(r"[^\w-]+", "_", name).strip("_")
    path = folder / f"{base}.png"
    if path.exists():
        path = folder / f"{base}_{time.strftime('%Y%m%d-%H%M%S')}.png"
    counter = 2
    while path.exists():
        path = folder / f"{base}_{counter}.png"
        counter += 1
    return path


def write_png(generated: GeneratedImage, folder: Path) -> Path:
    """Any thread (no bpy): save the result as a PNG carrying its settings, under a name no file has yet.

    The worker calls it, so that encoding (about 0.1 s a 1024² image) never holds Blender's UI.
    """
    return save_png(generated.pixels, _unique_path(folder, result_name(generated.metadata)), generated.metadata)


def write_result(generated: GeneratedImage, settings: SDSettings) -> bpy.types.Image:
    """Save the PNG here and now, and load it (``load_result``)."""
    return load_result(generated, write_png(generated, output_folder(settings)))


def load_result(generated: GeneratedImage, path: Path) -> bpy.types.Image:
    """A new Blender image of the result's PNG at ``path``, carrying its settings as custom properties."""
    image = bpy.data.images.load(str(path), check_existing=False)
    image.name = result_name(generated.metadata)
    for key in ("prompt", "negative_prompt", "seed", "model", "steps", "guidance", "scheduler", "strength"):
        if generated.metadata.get(key) is not None:
            image[f"sd_{key}"] = generated.metadata[key]
    image["sd_parameters"] = json.dumps(generated.metadata, default=str)
    return image


def add_history(scene: bpy.types.Scene, image: bpy.types.Image, settings: dict[str, Any], seed: int) -> None:
    """Record the settings that produced ``image`` (``settings_snapshot`` as Generate was clicked, with the image's
    actual seed) for later restore."""
    snapshot = {**settings, "seed": seed}
    item = scene.sd_history.add()
    item.label = image.name
    item.image = image
    item.settings_json = json.dumps(snapshot)
    scene.sd_history_index = len(scene.sd_history) - 1


def to_blender_pixels(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) top-row-first -> flat RGBA bottom-row-first float32, as Image.pixels wants."""
    height, width = pixels.shape[:2]
    rgba = np.ones((height, width, 4), dtype=np.float32)
    rgba[..., :3] = pixels
    return rgba[::-1].ravel()


def show_preview(pixels: np.ndarray) -> bpy.types.Image:
    """Write a step preview into the reusable 'SD Preview' image (never packed into the .blend)."""
    height, width = pixels.shape[:2]
    image = bpy.data.images.get(PREVIEW_IMAGE)
    if image is None:
        image = bpy.data.images.new(PREVIEW_IMAGE, width, height, alpha=False)
    elif tuple(image.size) != (width, height):
        image.scale(width, height)
    image.pixels.foreach_set(to_blender_pixels(pixels))
    image.update()
    return image
