"""Add-on preferences: where models live, the device, low-VRAM and safety switches."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from sd_core.request import EngineSettings

from . import dependency_panel

ADDON_PACKAGE = __package__  # "blender_addon" in a checkout, "bl_ext.<repo>.sd_blender" as an extension
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class SDPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    models_dir: StringProperty(  # type: ignore[valid-type]
        name="Models Folder",
        subtype="DIR_PATH",
        description="Scanned for .safetensors checkpoints and diffusers folders (models and ControlNets)",
    )
    hub_models: StringProperty(  # type: ignore[valid-type]
        name="Hub Models",
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="Comma-separated Hugging Face ids; downloaded only when Online Access is on",
    )
    hub_controlnets: StringProperty(  # type: ignore[valid-type]
        name="Hub ControlNets", default="lllyasviel/control_v11f1p_sd15_depth", description="Comma-separated ids"
    )
    device: EnumProperty(  # type: ignore[valid-type]
        name="Device",
        items=[
            ("auto", "Automatic", "CUDA, then Apple Metal, then CPU"),
            ("cuda", "NVIDIA CUDA", ""),
            ("mps", "Apple Metal", ""),
            ("cpu", "CPU", "Slow, but always works"),
        ],
    )
    dtype: EnumProperty(  # type: ignore[valid-type]
        name="Precision",
        items=[
            ("auto", "Automatic", "Half precision on GPUs, full on the CPU"),
            ("float16", "Half (fp16)", ""),
            ("bfloat16", "BFloat16", "For GPUs that show black images in fp16"),
            ("float32", "Full (fp32)", "Most compatible, twice the memory"),
        ],
    )
    acceleration: EnumProperty(  # type: ignore[valid-type]
        name="GPU Speed-up",
        items=[
            ("auto", "Automatic", "CUDA graphs and Triton kernels on NVIDIA GPUs (1.8-5x faster), plain elsewhere"),
            ("off", "Off", "Plain diffusers: use if a driver or GPU misbehaves with the speed-up"),
        ],
    )
    cpu_offload: BoolProperty(  # type: ignore[valid-type]
        name="CPU Offload (low VRAM)", description="Keep idle parts of the model in RAM: slower, far less VRAM"
    )
    vae_tiling: BoolProperty(name="VAE Tiling (low VRAM)", description="Decode large images in tiles")  # type: ignore[valid-type]
    allow_unsafe_pickle: BoolProperty(  # type: ignore[valid-type]
        name="Allow Pickled .ckpt (unsafe)",
        description="Pickled checkpoints can run arbitrary code when loaded: only for files you trust",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "models_dir")
        layout.prop(self, "hub_models")
        layout.prop(self, "hub_controlnets")
        if not bpy.app.online_access:
            layout.label(text="Online Access is off: only local and already-downloaded models load.", icon="INFO")
        row = layout.row()
        row.prop(self, "device")
        row.prop(self, "dtype")
        layout.prop(self, "acceleration")
        row = layout.row()
        row.prop(self, "cpu_offload")
        row.prop(self, "vae_tiling")
        layout.prop(self, "allow_unsafe_pickle")
        layout.operator("sd.unload_models", icon="TRASH")
        dependency_panel.draw(layout)

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            device=self.device,
            dtype=self.dtype,
            cpu_offload=self.cpu_offload,
            vae_tiling=self.vae_tiling,
            acceleration=self.acceleration,
            allow_network=bool(bpy.app.online_access),
            allow_unsafe_pickle=self.allow_unsafe_pickle,
        )


def get_preferences(context: bpy.types.Context | None = None) -> SDPreferences:
    context = context or bpy.context
    return context.preferences.addons[ADDON_PACKAGE].preferences  # type: ignore[return-value]


@lru_cache(maxsize=512)
def _kind_of(path: str, _mtime: float) -> str | None:
    """'pipeline', 'controlnet' or None (not a model); cached per file version, read from tensor names."""
    candidate = Path(path)
    if candidate.is_dir():
        if (candidate / "model_index.json").is_file():
            return "pipeline"
        config = candidate / "config.json"
        if config.is_file():
            class_name = json.loads(config.read_text()).get("_class_name", "")
            return "controlnet" if "ControlNet" in class_name else None
        return None
    if candidate.suffix.lower() != ".safetensors":
        return "pipeline" if candidate.suffix.lower() in CHECKPOINT_SUFFIXES else None
    from sd_core.errors import SDCoreError
    from sd_core.models import detect_checkpoint

    try:
        return detect_checkpoint(candidate).kind
    except SDCoreError:
        return None


def scan_models_folder(folder: str, kind: str) -> list[str]:
    """Model paths of the given kind directly inside ``folder`` (files and diffusers folders)."""
    root = Path(bpy.path.abspath(folder)) if folder else None
    if root is None or not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if _kind_of(str(entry), entry.stat().st_mtime) == kind:
            found.append(str(entry))
    return found


def known_models(context: bpy.types.Context, kind: str) -> list[str]:
    """Suggestions for the model fields: the models folder's content, then the configured hub ids."""
    try:
        prefs = get_preferences(context)
    except KeyError:
        return []
    hub = prefs.hub_models if kind == "pipeline" else prefs.hub_controlnets
    hub_ids = [item.strip() for item in hub.split(",") if item.strip()]
    return scan_models_folder(prefs.models_dir, kind) + hub_ids


CLASSES = (SDPreferences,)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
