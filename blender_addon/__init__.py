"""Stable Diffusion inside Blender: img2img, inpainting and depth-ControlNet on your scene.

Registration only. The add-on's modules are bpy glue around ``sd_core`` (bundled with the extension,
see ``dependencies.activate``); torch and diffusers load on first use, so enabling the add-on is fast
and works even before its Python dependencies are installed.
"""

from __future__ import annotations

from . import dependencies

dependencies.activate(__package__)

from . import dependency_panel, generation, multiview, operators, preferences, properties, ui  # noqa: E402

# multiview after ui: its panel is a child of the main panel
_MODULES = (properties, preferences, dependency_panel, operators, ui, multiview)


def register() -> None:
    for module in _MODULES:
        module.register()


def unregister() -> None:
    generation.shutdown_runner()
    for module in reversed(_MODULES):
        module.unregister()
    dependencies.deactivate()
