"""The dependency section of the add-on preferences: state, device, and install/repair without freezing.

Checking imports torch (seconds) and installing runs pip (minutes), so both run off the main thread;
a timer redraws the preferences while they work. ``dependencies.py`` holds the logic; this is the UI.
"""

from __future__ import annotations

import threading

import bpy

from . import dependencies

ADDON_PACKAGE = __package__  # "blender_addon" in a checkout, "bl_ext.<repo>.sd_blender" as an extension
POLL_INTERVAL_S = 0.5

_state: dependencies.DependencyState | None = None
_checking = False
_install_job: dependencies.DependencyInstallJob | None = None


def _redraw_preferences() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()


def check_now() -> dependencies.DependencyState:
    """Inspect the dependencies synchronously (tests, and the worker thread below)."""
    global _state
    requirements = dependencies.read_requirements(dependencies.shipped_constraints())
    deps = dependencies.deps_folder(ADDON_PACKAGE) if ADDON_PACKAGE.startswith("bl_ext.") else None
    _state = dependencies.inspect_dependencies(requirements, deps=deps)
    return _state


def _check_in_background() -> None:
    global _checking
    try:
        check_now()
    finally:
        _checking = False


def _poll() -> float | None:
    _redraw_preferences()
    busy = _checking or (_install_job is not None and _install_job.poll().state == "running")
    return POLL_INTERVAL_S if busy else None


def _start_polling() -> None:
    if not bpy.app.timers.is_registered(_poll):
        bpy.app.timers.register(_poll, first_interval=POLL_INTERVAL_S)


class SD_OT_check_dependencies(bpy.types.Operator):
    """Check which Python packages import and which device Stable Diffusion will use"""

    bl_idname = "sd.check_dependencies"
    bl_label = "Check Dependencies"

    def execute(self, context: bpy.types.Context) -> set[str]:
        global _checking
        if not _checking:
            _checking = True
            threading.Thread(target=_check_in_background, name="sd-check-deps", daemon=True).start()
            _start_polling()
        return {"FINISHED"}


class SD_OT_install_dependencies(bpy.types.Operator):
    """Download and install torch, diffusers and the rest into this add-on's private folder (needs Online Access)"""

    bl_idname = "sd.install_dependencies"
    bl_label = "Install / Repair Dependencies"

    def execute(self, context: bpy.types.Context) -> set[str]:
        global _install_job
        if _install_job is not None and _install_job.poll().state == "running":
            self.report({"INFO"}, "Dependencies are already being installed.")
            return {"CANCELLED"}
        try:
            _install_job = dependencies.start_install_job(ADDON_PACKAGE)
        except dependencies.OfflineError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        _start_polling()
        return {"FINISHED"}


def draw(layout: bpy.types.UILayout) -> None:
    box = layout.box()
    box.label(text="Python Dependencies", icon="SCRIPT")
    if _checking:
        box.label(text="Checking...", icon="TIME")
    elif _state is None:
        box.label(text="Not checked yet.")
    elif _state.ok:
        box.label(text=f"All installed. Device: {_state.device}", icon="CHECKMARK")
    else:
        for line in _state.problems[:8]:
            box.label(text=line, icon="ERROR")
    if _state is not None and _state.restart_required:
        box.label(text="Restart Blender to use the newly installed packages.", icon="INFO")
    if _install_job is not None:
        status = _install_job.poll()
        box.label(text=f"Install: {status.state}. {status.message}")
        for line in status.lines[-3:]:
            box.label(text=line)
    row = box.row()
    row.operator("sd.check_dependencies", icon="VIEWZOOM")
    row.operator("sd.install_dependencies", icon="IMPORT")


CLASSES = (SD_OT_check_dependencies, SD_OT_install_dependencies)

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()


def unregister() -> None:
    if bpy.app.timers.is_registered(_poll):
        bpy.app.timers.unregister(_poll)
    _unregister_classes()
