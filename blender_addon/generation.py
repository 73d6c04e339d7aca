"""The add-on's one-way flow: capture the scene -> build a request -> (worker generates, and projects the
image into the selected meshes' textures) -> write back.

Both the Generate operator and the headless command go through these functions; only how they wait
differs (a timer polling the job runner, or a blocking wait).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy

from sd_core.depth import depth_to_control_image
from sd_core.errors import SDCoreError, ValidationError
from sd_core.request import ControlSpec, EngineSettings, GenerationRequest, LoraSpec, Result

from . import capture, viewport, writeback
from .jobs import Job, JobRunner
from .preferences import get_preferences
from .properties import SDSettings, settings_snapshot

_runner: JobRunner | None = None


def runner(settings: EngineSettings) -> JobRunner:
    """The add-on's single job runner (one worker, models kept loaded), set to ``settings``."""
    global _runner
    if _runner is None:
        _runner = JobRunner(settings)
    else:
        _runner.configure(settings)
    return _runner


def current_runner() -> JobRunner | None:
    return _runner


def shutdown_runner() -> None:
    """On unregister: cancel what runs and free the models (the daemon thread then idles)."""
    global _runner
    if _runner is not None:
        _runner.cancel()
        _runner.unload()
        _runner = None


@dataclass
class Plan:
    """What the main thread decided before handing the work over: the request and how to write back."""

    request: GenerationRequest
    scene_name: str
    # Where the worker writes the result PNGs: the settings' folder, resolved now (it may be relative to the .blend).
    output_folder: Path
    # The panel's settings as Generate was clicked, for the history (the artist may edit them while it runs).
    settings: dict[str, Any]
    camera_capture: Any = None
    # Meshes to project the result onto, read from Blender now; the projecting itself runs on the worker.
    surfaces: list[Any] = field(default_factory=list)
    bake_resolution: int = 1024


@dataclass(frozen=True)
class WorkerOutput:
    """What the worker did with a result before handing it over: the PNGs it wrote (None where writing failed:
    the main thread then writes and reports) and the projections into the planned meshes (or why not)."""

    pngs: list[Path | None]
    projections: list[Any] | SDCoreError | None = None


def selected_meshes(context: bpy.types.Context) -> list[bpy.types.Object]:
    selected = list(context.selected_objects)
    not_meshes = [obj.name for obj in selected if obj.type != "MESH"]
    if not_meshes:
        raise ValidationError(
            f"Only meshes can be inpainted or textured; deselect: {', '.join(not_meshes[:5])}"
            + ("..." if len(not_meshes) > 5 else "")
            + "."
        )
    return selected


def lora_specs(settings: SDSettings) -> tuple[LoraSpec, ...]:
    """The list's enabled LoRAs with their files made absolute (``//`` is the .blend's folder: the worker has no
    .blend). A missing file is refused here, before any render or model load, naming the file to fix."""
    loras = tuple(
        LoraSpec(bpy.path.abspath(item.path.strip()), item.scale)
        for item in settings.loras
        if item.enabled and item.path.strip()
    )
    for lora in loras:
        if not Path(lora.path).expanduser().is_file():
            raise ValidationError(f"LoRA not found: '{lora.path}' is not a file. Choose it again, or untick it.")
    return loras


@contextmanager
def _render_size(scene: bpy.types.Scene, settings: SDSettings):
    """Render at the custom size when 'Size from Render' is off; restore the scene's own size after."""
    render = scene.render
    saved = (render.resolution_x, render.resolution_y, render.resolution_percentage)
    if not settings.size_from_render:
        render.resolution_x, render.resolution_y, render.resolution_percentage = settings.width, settings.height, 100
    try:
        yield
    finally:
        render.resolution_x, render.resolution_y, render.resolution_percentage = saved


def plan_generation(context: bpy.types.Context) -> Plan:
    """Capture the inputs the settings ask for and build the request; raises ValidationError early."""
    scene = context.scene
    settings: SDSettings = scene.sd_settings
    model = settings.model.strip()
    if not model:
        raise ValidationError("No model is configured: pick one in the Stable Diffusion panel (or its preferences).")
    loras = lora_specs(settings)
    needs_selection = settings.mode == "INPAINT" and settings.source != "IMAGE"
    objects = selected_meshes(context) if (needs_selection or settings.project_to_selected) else []
    if (needs_selection or settings.project_to_selected) and not objects:
        raise ValidationError("Select the mesh objects to inpaint or texture first.")

    image = mask = depth = None
    camera_capture = None
    if settings.source == "IMAGE":
        if settings.source_image is None:
            raise ValidationError("Choose the image to work on (Image Editor source).")
        image, mask = capture.capture_image_editor(settings.source_image, settings.mask_image)
        if settings.mode != "INPAINT":
            mask = None
    else:
        samples = settings.capture_samples or None  # 0: the scene's own
        if settings.mode == "TXT2IMG":  # the colour goes unused; depth and masks are exact with one sample
            samples = 1
        masked = objects if needs_selection else []  # projecting needs no mask: any engine's depth will do
        with _render_size(scene, settings):
            if settings.source == "VIEWPORT":
                long_side = max(scene.render.resolution_x, scene.render.resolution_y)
                camera_capture = viewport.capture_viewport(context, masked, long_side=long_side, samples=samples)
            else:
                camera_capture = capture.capture_camera(scene, masked, samples=samples)
        image, depth = camera_capture.color, camera_capture.depth
        if settings.mode == "INPAINT":
            mask = camera_capture.mask

    controls: tuple[ControlSpec, ...] = ()
    if settings.use_depth and depth is not None:
        if not settings.depth_model.strip():
            raise ValidationError("Depth ControlNet is on but no depth model is chosen: pick one or turn it off.")
        controls = (ControlSpec(settings.depth_model.strip(), depth_to_control_image(depth), settings.depth_scale),)

    height, width = image.shape[:2]
    request = GenerationRequest(
        model=model,
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        image=image if settings.mode != "TXT2IMG" else None,
        mask=mask,
        controls=controls,
        loras=loras,
        width=width,
        height=height,
        strength=settings.strength,
        steps=settings.steps,
        guidance=settings.guidance,
        seed=None if settings.random_seed else settings.seed,
        batch_size=settings.batch_size,
        scheduler=settings.scheduler,
        tiling=settings.tiling,
        mask_grow=settings.mask_grow,
        mask_feather=settings.mask_feather,
    )
    request.validate()
    surfaces = []
    if settings.project_to_selected and camera_capture is not None:
        from . import bake

        surfaces = bake.read_surfaces(objects)
    return Plan(
        request,
        scene.name,
        writeback.output_folder(settings),
        settings_snapshot(settings),
        camera_capture,
        surfaces,
        settings.bake_resolution,
    )


def submit(context: bpy.types.Context, settings: EngineSettings | None = None) -> Job:
    """Plan on the main thread and queue the work; ``settings`` default to the add-on preferences."""
    plan = plan_generation(context)
    engine_settings = settings or get_preferences(context).engine_settings()
    return runner(engine_settings).submit(
        plan.request,
        context={"plan": plan, "apply": apply_finished},
        finish_on_worker=functools.partial(finish_on_worker, plan),
    )


def finish_on_worker(plan: Plan, result: Result) -> WorkerOutput:
    """Worker: write the PNGs and project the first image into the planned meshes, so that the main thread
    only loads and wires what is ready."""
    pngs = [_write_png(plan, generated) for generated in result.images]
    return WorkerOutput(pngs, project_on_worker(plan, result) if plan.surfaces else None)


def _write_png(plan: Plan, generated: Any) -> Path | None:
    try:
        return writeback.write_png(generated, plan.output_folder)
    except (OSError, ValueError):  # the main thread tries again and reports what stops it
        return None


def project_on_worker(plan: Plan, result: Result) -> Any:
    """Worker: project the first image into each planned mesh's texture (numpy only, seconds at 2048²).

    An artist error comes back as the value, not raised: the images are still written back.
    """
    from . import bake

    try:
        return bake.project_textures(
            result.images[0].pixels, plan.camera_capture, plan.surfaces, texture_size=plan.bake_resolution
        )
    except SDCoreError as error:
        return error


def apply_finished(job: Job) -> list[bpy.types.Image]:
    """Main thread: turn a finished job into Blender images (and baked textures when asked)."""
    plan: Plan = job.context["plan"]
    scene = bpy.data.scenes.get(plan.scene_name)
    if job.result is None or scene is None:
        return []
    settings: SDSettings = scene.sd_settings
    output = job.worker_output if isinstance(job.worker_output, WorkerOutput) else WorkerOutput([])
    created = []
    for index, generated in enumerate(job.result.images):
        written = output.pngs[index] if index < len(output.pngs) else None
        if written is None:
            image = writeback.write_result(generated, settings)
        else:
            image = writeback.load_result(generated, written)
        writeback.add_history(scene, image, plan.settings, generated.seed)
        created.append(image)
    if created:
        settings.last_result = created[0]
        if isinstance(output.projections, SDCoreError):
            print(f"Stable Diffusion: the result was not projected onto the meshes: {output.projections}")
        elif output.projections:
            from . import bake

            bake.wire_projections(output.projections)
    return created
