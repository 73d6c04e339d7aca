"""Operators: thin. They plan a job on the main thread, hand it to the runner, and return at once.

Clicked in the UI, Generate runs modally: a window timer polls the runner, shows step previews in the
Image Editor, writes finished results back and reports errors in the status bar. Run from a script
(``execute``), an app timer does the same polling. Diffusion never runs on Blender's main thread.
"""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, IntProperty

from sd_core.errors import SDCoreError

from . import generation, writeback
from .jobs import Job
from .properties import PRESET_ITEMS, PRESETS, restore_settings

POLL_INTERVAL_S = 0.1


def _status(text: str, fraction: float = 0.0) -> None:
    wm = bpy.context.window_manager
    wm.sd_status = text
    wm.sd_progress = fraction
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "IMAGE_EDITOR", "PREFERENCES"}:
                area.tag_redraw()


def _show_in_image_editors(image: bpy.types.Image) -> None:
    """Show ``image`` in Image Editors that show nothing or the add-on's own output (never a pinned one)."""
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type != "IMAGE_EDITOR":
                continue
            space = area.spaces.active
            current = space.image
            ours = current is None or current.name == writeback.PREVIEW_IMAGE or current.get("sd_seed") is not None
            if ours and not space.use_image_pin:
                space.image = image


def _finish(job: Job) -> None:
    if job.state == "done":
        images = job.context["apply"](job)  # what the submitter wants done with the result
        if images:
            _show_in_image_editors(images[0])
            bpy.ops.ed.undo_push(message="Stable Diffusion result")  # one undo step for images and bakes
        _status(f"Done: {', '.join(image.name for image in images)}", 1.0)
    elif job.state == "cancelled":
        _status("Cancelled.")
    else:
        _status(f"Error: {job.error}")
        print(f"Stable Diffusion: {job.error}")


# Before step 1 a job may load models and, the first time at a new image size, prepare the GPU fast path:
# seconds in which the artist should know work is under way.
STARTED_STATUS = "Working: loading models and preparing the GPU (the first image at a new size takes longest)..."


def poll_jobs() -> float | None:
    """The timer: apply events from the worker; keep ticking while jobs are active."""
    active_runner = generation.current_runner()
    if active_runner is None:
        return None
    for event in active_runner.poll():
        if event.kind == "finished":
            _finish(event.job)
        elif event.kind == "started":
            _status(STARTED_STATUS)
        elif event.job.progress is not None:
            progress = event.job.progress
            if progress.preview is not None:
                _show_in_image_editors(writeback.show_preview(progress.preview))
            _status(f"Step {progress.step}/{progress.total}", event.job.fraction())
    return POLL_INTERVAL_S if active_runner.active_jobs() else None


class SD_OT_generate(bpy.types.Operator):
    """Capture the scene and generate with Stable Diffusion (runs in the background)"""

    bl_idname = "sd.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER"}

    _job: Job | None = None
    _timer: bpy.types.Timer | None = None

    def _submit(self, context: bpy.types.Context) -> Job | None:
        try:
            job = generation.submit(context)
        except SDCoreError as error:
            self.report({"ERROR"}, str(error))
            return None
        _status(f"Queued job {job.id}...")
        return job

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self._submit(context) is None:
            return {"CANCELLED"}
        if not bpy.app.timers.is_registered(poll_jobs):
            bpy.app.timers.register(poll_jobs, first_interval=POLL_INTERVAL_S)
        return {"FINISHED"}

    def invoke(self, context: bpy.types.Context, _event: bpy.types.Event) -> set[str]:
        self._job = self._submit(context)
        if self._job is None:
            return {"CANCELLED"}
        self._timer = context.window_manager.event_timer_add(POLL_INTERVAL_S, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type != "TIMER" or self._job is None:
            return {"PASS_THROUGH"}
        poll_jobs()
        if not self._job.finished.is_set():
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        if self._job.state == "failed":
            self.report({"ERROR"}, self._job.error or "Generation failed.")
        elif self._job.state == "cancelled":
            self.report({"INFO"}, "Generation cancelled.")
        return {"FINISHED"}


class SD_OT_cancel(bpy.types.Operator):
    """Stop the running generation within one step"""

    bl_idname = "sd.cancel"
    bl_label = "Cancel"

    def execute(self, context: bpy.types.Context) -> set[str]:
        active_runner = generation.current_runner()
        if active_runner is not None:
            active_runner.cancel()
        return {"FINISHED"}


class SD_OT_unload_models(bpy.types.Operator):
    """Free the loaded models from RAM and GPU memory"""

    bl_idname = "sd.unload_models"
    bl_label = "Unload Models"

    def execute(self, context: bpy.types.Context) -> set[str]:
        generation.shutdown_runner()
        self.report({"INFO"}, "Models unloaded.")
        return {"FINISHED"}


class SD_OT_restore_history(bpy.types.Operator):
    """Restore the settings (and seed) that produced this history entry"""

    bl_idname = "sd.restore_history"
    bl_label = "Restore Settings"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(default=-1)  # type: ignore[valid-type]

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        index = self.index if self.index >= 0 else scene.sd_history_index
        if not 0 <= index < len(scene.sd_history):
            self.report({"WARNING"}, "Pick a history entry first.")
            return {"CANCELLED"}
        restore_settings(scene.sd_settings, scene.sd_history[index].settings())
        scene.sd_settings.random_seed = False
        return {"FINISHED"}


class SD_OT_apply_preset(bpy.types.Operator):
    """Set the panel up for a common task"""

    bl_idname = "sd.apply_preset"
    bl_label = "Apply Preset"
    bl_options = {"REGISTER", "UNDO"}

    preset: EnumProperty(items=PRESET_ITEMS)  # type: ignore[valid-type]

    def execute(self, context: bpy.types.Context) -> set[str]:
        restore_settings(context.scene.sd_settings, PRESETS[self.preset])
        return {"FINISHED"}


class SD_OT_lora_add(bpy.types.Operator):
    """Add a LoRA to the list (then choose its file)"""

    bl_idname = "sd.lora_add"
    bl_label = "Add LoRA"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.sd_settings
        settings.loras.add()
        settings.lora_index = len(settings.loras) - 1
        return {"FINISHED"}


class SD_OT_lora_remove(bpy.types.Operator):
    """Remove the active LoRA from the list"""

    bl_idname = "sd.lora_remove"
    bl_label = "Remove LoRA"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        settings = context.scene.sd_settings
        return 0 <= settings.lora_index < len(settings.loras)

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.sd_settings
        settings.loras.remove(settings.lora_index)
        settings.lora_index = min(settings.lora_index, len(settings.loras) - 1)
        return {"FINISHED"}


CLASSES = (
    SD_OT_generate,
    SD_OT_cancel,
    SD_OT_unload_models,
    SD_OT_restore_history,
    SD_OT_apply_preset,
    SD_OT_lora_add,
    SD_OT_lora_remove,
)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()
    bpy.types.WindowManager.sd_status = bpy.props.StringProperty()
    bpy.types.WindowManager.sd_progress = bpy.props.FloatProperty(min=0.0, max=1.0, subtype="FACTOR")


def unregister() -> None:
    if bpy.app.timers.is_registered(poll_jobs):
        bpy.app.timers.unregister(poll_jobs)
    del bpy.types.WindowManager.sd_progress
    del bpy.types.WindowManager.sd_status
    _unregister_classes()
