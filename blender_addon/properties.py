"""Per-scene settings (saved in the .blend), the per-scene history, and built-in presets."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from sd_core.schedulers import SCHEDULERS


def _model_search(kind: str):
    def search(_self: Any, context: bpy.types.Context, edit_text: str) -> list[str]:
        from .preferences import known_models

        return [m for m in known_models(context, kind) if edit_text.lower() in m.lower()]

    return search


SOURCES = [
    ("CAMERA", "Scene Camera", "Render the scene camera: colour, depth and the selected objects' mask"),
    ("VIEWPORT", "Viewport", "The 3D viewport's current view, rendered with its depth and the selection mask"),
    ("IMAGE", "Image Editor", "An existing image, with an optional painted mask"),
]
MODES = [
    ("TXT2IMG", "Text to Image", "Ignore the source colour; with depth control it follows the scene's shapes"),
    ("IMG2IMG", "Image to Image", "Repaint the whole source image"),
    ("INPAINT", "Inpaint", "Repaint only the selected objects (camera) or the masked area (image)"),
]
TILINGS = [
    ("none", "Off", "No seamless tiling"),
    ("x", "X", "Tile left-right"),
    ("y", "Y", "Tile top-bottom"),
    ("xy", "Both", "Tile in both directions"),
]


class SDLoraItem(bpy.types.PropertyGroup):
    """One row of the LoRA list: merged into the model while enabled."""

    path: StringProperty(  # type: ignore[valid-type]
        name="LoRA",
        subtype="FILE_PATH",
        options={"PATH_SUPPORTS_BLEND_RELATIVE"},  # a '//' path travels with the .blend
        description="A LoRA file (.safetensors: kohya/A1111, diffusers or PEFT)",
    )
    scale: FloatProperty(  # type: ignore[valid-type]
        name="Scale",
        default=1.0,
        soft_min=-2.0,
        soft_max=2.0,
        min=-10.0,
        max=10.0,
        description="How strongly the LoRA applies: 1 as trained, 0 not at all, below 0 its opposite",
    )
    enabled: BoolProperty(name="Enabled", default=True, description="Use this LoRA")  # type: ignore[valid-type]


class SDSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to generate")  # type: ignore[valid-type]
    negative_prompt: StringProperty(name="Negative", description="What to avoid")  # type: ignore[valid-type]
    model: StringProperty(  # type: ignore[valid-type]
        name="Model",
        description="Checkpoint file, diffusers folder or hub id (see the add-on preferences)",
        search=_model_search("pipeline"),
        search_options={"SUGGESTION"},
    )
    source: EnumProperty(name="Source", items=SOURCES, default="CAMERA")  # type: ignore[valid-type]
    capture_samples: IntProperty(  # type: ignore[valid-type]
        name="Capture Samples",
        default=16,
        min=0,
        max=65536,
        description="Render samples of the camera or viewport capture (Cycles, EEVEE); 0 keeps the scene's own. "
        "Depth and masks are exact at any count, and few samples keep Blender responsive while it renders; "
        "Text to Image, which uses no colour, always captures with one",
    )
    mode: EnumProperty(name="Mode", items=MODES, default="IMG2IMG")  # type: ignore[valid-type]
    source_image: PointerProperty(name="Image", type=bpy.types.Image)  # type: ignore[valid-type]
    mask_image: PointerProperty(  # type: ignore[valid-type]
        name="Mask", type=bpy.types.Image, description="White = repaint; empty uses the image's alpha"
    )
    strength: FloatProperty(name="Strength", default=0.75, min=0.01, max=1.0)  # type: ignore[valid-type]
    steps: IntProperty(name="Steps", default=20, min=1, max=150)  # type: ignore[valid-type]
    guidance: FloatProperty(name="Guidance", default=7.0, min=0.0, max=30.0)  # type: ignore[valid-type]
    seed: IntProperty(name="Seed", default=0, min=0)  # type: ignore[valid-type]
    random_seed: BoolProperty(name="Random Seed", default=True)  # type: ignore[valid-type]
    batch_size: IntProperty(name="Variations", default=1, min=1, max=16)  # type: ignore[valid-type]
    size_from_render: BoolProperty(  # type: ignore[valid-type]
        name="Size from Render", default=True, description="Use the scene's render resolution"
    )
    width: IntProperty(name="Width", default=512, min=64, max=4096, step=8)  # type: ignore[valid-type]
    height: IntProperty(name="Height", default=512, min=64, max=4096, step=8)  # type: ignore[valid-type]
    scheduler: EnumProperty(  # type: ignore[valid-type]
        name="Sampler",
        items=[(key, spec.label, "") for key, spec in SCHEDULERS.items()],
        default="dpmpp_2m_karras",
    )
    use_depth: BoolProperty(  # type: ignore[valid-type]
        name="Depth ControlNet", default=True, description="Follow the scene's geometry using Blender's depth"
    )
    depth_model: StringProperty(  # type: ignore[valid-type]
        name="Depth Model", search=_model_search("controlnet"), search_options={"SUGGESTION"}
    )
    depth_scale: FloatProperty(name="Depth Strength", default=1.0, min=0.0, max=2.0)  # type: ignore[valid-type]
    loras: CollectionProperty(name="LoRAs", type=SDLoraItem)  # type: ignore[valid-type]
    lora_index: IntProperty(name="Active LoRA", default=0)  # type: ignore[valid-type]
    mask_grow: IntProperty(name="Grow Mask", default=4, min=0, max=128, subtype="PIXEL")  # type: ignore[valid-type]
    mask_feather: IntProperty(name="Feather", default=4, min=0, max=128, subtype="PIXEL")  # type: ignore[valid-type]
    tiling: EnumProperty(name="Seamless", items=TILINGS, default="none")  # type: ignore[valid-type]
    project_to_selected: BoolProperty(  # type: ignore[valid-type]
        name="Project onto Selected",
        default=False,
        description="Bake the result into the selected meshes' UV textures, where the camera sees them",
    )
    bake_resolution: IntProperty(name="Texture Size", default=1024, min=64, max=8192)  # type: ignore[valid-type]
    output_dir: StringProperty(  # type: ignore[valid-type]
        name="Output Folder",
        default="//sd_output/",
        subtype="DIR_PATH",
        options={"PATH_SUPPORTS_BLEND_RELATIVE"},  # Blender 5 warns of a '//' path on a property without it
    )
    last_result: PointerProperty(name="Last Result", type=bpy.types.Image)  # type: ignore[valid-type]


# Which settings a history entry and a preset can restore.
RESTORABLE = (
    "prompt",
    "negative_prompt",
    "model",
    "mode",
    "strength",
    "steps",
    "guidance",
    "seed",
    "scheduler",
    "use_depth",
    "depth_model",
    "depth_scale",
    "mask_grow",
    "mask_feather",
    "tiling",
)


# What a snapshot keeps of each LoRA row, under the key "loras" (a list can't be one flat value).
LORA_FIELDS = ("path", "scale", "enabled")


def settings_snapshot(settings: SDSettings) -> dict[str, Any]:
    snapshot = {name: getattr(settings, name) for name in RESTORABLE}
    snapshot["loras"] = [{name: getattr(item, name) for name in LORA_FIELDS} for item in settings.loras]
    return snapshot


def restore_settings(settings: SDSettings, values: dict[str, Any]) -> None:
    """Set what ``values`` names; the LoRA list only when it is there, so a preset keeps the artist's LoRAs."""
    for name, value in values.items():
        if name in RESTORABLE:
            setattr(settings, name, value)
    if "loras" in values:
        set_loras(settings, values["loras"])


def set_loras(settings: SDSettings, rows: Iterable[dict[str, Any]]) -> None:
    """Replace the LoRA list with ``rows`` (fields of ``LORA_FIELDS``; a missing one keeps its default)."""
    settings.loras.clear()
    for row in rows:
        item = settings.loras.add()
        for name in LORA_FIELDS:
            if name in row:
                setattr(item, name, row[name])
    settings.lora_index = len(settings.loras) - 1


class SDHistoryItem(bpy.types.PropertyGroup):
    """One finished generation: enough to show it and to restore its settings."""

    label: StringProperty()  # type: ignore[valid-type]
    image: PointerProperty(type=bpy.types.Image)  # type: ignore[valid-type]
    settings_json: StringProperty()  # type: ignore[valid-type]

    def settings(self) -> dict[str, Any]:
        return json.loads(self.settings_json or "{}")


PRESETS: dict[str, dict[str, Any]] = {
    "RESTYLE": {"mode": "IMG2IMG", "strength": 0.6, "use_depth": True, "depth_scale": 0.8, "steps": 20},
    "TEXTURE": {"mode": "TXT2IMG", "use_depth": True, "depth_scale": 1.0, "steps": 25, "guidance": 7.5},
    "INPAINT_SELECTED": {"mode": "INPAINT", "strength": 1.0, "use_depth": True, "mask_grow": 8, "mask_feather": 6},
    "SEAMLESS": {"mode": "TXT2IMG", "use_depth": False, "tiling": "xy", "steps": 25},
    "FAST_DRAFT": {"steps": 8, "scheduler": "dpmpp_2m_karras", "guidance": 5.0},
}
PRESET_ITEMS = [
    ("RESTYLE", "Restyle Render", "Img2img over the camera render, guided by depth"),
    ("TEXTURE", "Texture from Depth", "New look that keeps the scene's shapes"),
    ("INPAINT_SELECTED", "Inpaint Selected", "Repaint only the selected objects"),
    ("SEAMLESS", "Seamless Texture", "A tileable texture"),
    ("FAST_DRAFT", "Fast Draft", "Few steps for quick iteration"),
]

CLASSES = (SDLoraItem, SDSettings, SDHistoryItem)  # a property group before the settings that hold it
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()
    bpy.types.Scene.sd_settings = PointerProperty(type=SDSettings)
    bpy.types.Scene.sd_history = CollectionProperty(type=SDHistoryItem)
    bpy.types.Scene.sd_history_index = IntProperty(default=-1)


def unregister() -> None:
    del bpy.types.Scene.sd_history_index
    del bpy.types.Scene.sd_history
    del bpy.types.Scene.sd_settings
    _unregister_classes()
