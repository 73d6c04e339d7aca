"""Multi-view texturing in Blender: one consistent texture all around each selected mesh.

The bpy side only: place cameras (a ring around the selection, as real camera objects in their own
collection so the artist can adjust them), render each camera's conditioning with ``capture_camera``
(colour, depth, per-object labels), pull each mesh's texels out with ``bake.mesh_corners``, and wire
the fused textures in with ``bake.wire_texture`` (non-destructive). The method and all fusion maths
live in ``sd_core.multiview`` (Blender-free, unit-tested); the diffusion runs on a worker thread.

Flow: ``plan_multiview`` (main thread: cameras, renders, mesh data) -> ``sd_core.multiview.texture_views``
(any thread, no bpy) -> ``apply_multiview`` (main thread: textures, materials, per-view preview images).
The operator runs the middle step as a task on the add-on's job runner (same worker, same loaded
models as Generate) and the shared timer applies it; the headless command
(``python -m blender_addon.multiview_headless``) and the tests call the three steps directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty
from mathutils import Vector

from sd_core.errors import SDCoreError, ValidationError
from sd_core.images import png_bytes
from sd_core.multiview import MultiViewResult, Surface, View, ViewGenerator, engine_generator, texture_views
from sd_core.request import Progress

from . import bake, generation, operators
from .capture import CameraCapture, capture_camera
from .jobs import Job
from .ui import SidebarPanel

if TYPE_CHECKING:
    from sd_core.engine import Engine

CAMERA_COLLECTION = "SD Multiview Cameras"
TEXTURE_LABEL = "SD Multiview"
PREVIEW_PREFIX = "SD Multiview View"
RING_MARGIN = 1.15
"""Camera distance is set so the selection's bounding sphere fills the frame with 15 % to spare."""


@dataclass
class MultiviewPlan:
    """Everything the worker needs, extracted on the main thread: no bpy object crosses threads."""

    object_names: list[str]
    uv_maps: list[str]
    camera_names: list[str]
    surfaces: list[Surface]
    views: list[View]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MultiviewTexture:
    """What one object received: its new texture, the UV map it is laid out in, the materials using it."""

    object_name: str
    image: bpy.types.Image
    uv_map: str
    materials: tuple[str, ...]
    seen_fraction: float


def selection_bounds(objects: Sequence[bpy.types.Object]) -> tuple[Vector, float]:
    """Centre and radius of the sphere around the objects' world-space bounding boxes."""
    corners = [obj.matrix_world @ Vector(corner) for obj in objects for corner in obj.bound_box]
    low = Vector(np.min(corners, axis=0))
    high = Vector(np.max(corners, axis=0))
    return (low + high) / 2, max((high - low).length / 2, 1e-3)


def ring_cameras(
    scene: bpy.types.Scene,
    objects: Sequence[bpy.types.Object],
    *,
    count: int = 8,
    elevation_degrees: float = 20.0,
    top: bool = False,
    bottom: bool = False,
    lens_mm: float = 50.0,
) -> list[bpy.types.Object]:
    """Create cameras evenly around the selection in the ``CAMERA_COLLECTION`` collection (replacing its cameras).

    They are named in generation order: the front (looking along +Y, like Blender's front view), then
    alternating neighbours left and right, so every new view overlaps what is already painted - the
    inpainting then continues the texture instead of starting a new one - then top and bottom.
    """
    if not objects:
        raise ValidationError("Select the meshes to place cameras around.")
    if count < 1 and not (top or bottom):
        raise ValidationError("Ask for at least one camera.")
    collection = _camera_collection(scene)
    for old in list(collection.objects):
        if old.type == "CAMERA":
            data = old.data
            bpy.data.objects.remove(old)
            if data.users == 0:
                bpy.data.cameras.remove(data)
    centre, radius = selection_bounds(objects)
    render = scene.render
    aspect = (render.resolution_x * render.pixel_aspect_x) / (render.resolution_y * render.pixel_aspect_y)
    half_fov = math.atan(36.0 / 2 / lens_mm / max(aspect, 1 / aspect))  # sensor fit AUTO: 36 mm on the long side
    distance = RING_MARGIN * radius / math.sin(half_fov)

    ring_order = [0] + [k for step in range(1, count) for k in (step, -step)]
    azimuths = [k % count for k in ring_order][:count]
    directions = []
    elevation = math.radians(elevation_degrees)
    for azimuth_index in azimuths:
        azimuth = 2 * math.pi * azimuth_index / count
        directions.append(
            Vector(
                (math.sin(azimuth) * math.cos(elevation), -math.cos(azimuth) * math.cos(elevation), math.sin(elevation))
            )
        )
    if top:
        directions.append(Vector((0.0, -1e-4, 1.0)))
    if bottom:
        directions.append(Vector((0.0, -1e-4, -1.0)))

    cameras = []
    for number, direction in enumerate(directions, 1):
        data = bpy.data.cameras.new(f"SD View {number:02d}")
        data.lens = lens_mm
        data.sensor_width = 36.0
        data.clip_end = max(data.clip_end, 4 * distance)
        camera = bpy.data.objects.new(f"SD View {number:02d}", data)
        camera.location = centre + direction.normalized() * distance
        camera.rotation_euler = (-direction).to_track_quat("-Z", "Y").to_euler()
        collection.objects.link(camera)
        cameras.append(camera)
    return cameras


def _camera_collection(scene: bpy.types.Scene) -> bpy.types.Collection:
    collection = bpy.data.collections.get(CAMERA_COLLECTION)
    if collection is None:
        collection = bpy.data.collections.new(CAMERA_COLLECTION)
    if collection.name not in scene.collection.children:
        scene.collection.children.link(collection)
    return collection


def multiview_cameras(scene: bpy.types.Scene, source: str) -> list[bpy.types.Object]:
    """The cameras to texture from: the add-on's ring collection ("RING") or every other scene camera ("SCENE")."""
    ring = bpy.data.collections.get(CAMERA_COLLECTION)
    ring_cameras_now = [obj for obj in ring.objects if obj.type == "CAMERA"] if ring is not None else []
    if source == "RING":
        cameras = ring_cameras_now
    else:
        cameras = [obj for obj in scene.objects if obj.type == "CAMERA" and obj not in ring_cameras_now]
    return sorted(cameras, key=lambda obj: obj.name)


@contextmanager
def _rendering_as(scene: bpy.types.Scene, size: int) -> Iterator[None]:
    """Square renders of ``size`` pixels (diffusion works best square), restoring camera and size after."""
    render = scene.render
    saved = (scene.camera, render.resolution_x, render.resolution_y, render.resolution_percentage)
    render.resolution_x = render.resolution_y = size
    render.resolution_percentage = 100
    try:
        yield
    finally:
        scene.camera, render.resolution_x, render.resolution_y, render.resolution_percentage = saved


def plan_multiview(
    scene: bpy.types.Scene,
    objects: Sequence[bpy.types.Object],
    cameras: Sequence[bpy.types.Object],
    *,
    size: int = 512,
    texture_size: int = 1024,
    samples: int | None = 1,
) -> MultiviewPlan:
    """Render every camera's conditioning and extract every mesh's texels (main thread); ``samples`` None renders
    with the scene's own sample count.

    One sample is enough: the colour pass only gives the model context around the objects, while
    depth and the object labels (Cycles' Object Index, EEVEE's Cryptomatte), what projection relies on,
    hold with any sample count.
    """
    meshes = list(objects)
    if not meshes:
        raise ValidationError("Nothing is selected: select the meshes to texture.")
    not_meshes = [obj.name for obj in meshes if obj.type != "MESH"]
    if not_meshes:
        raise ValidationError(f"Only meshes can be textured; deselect: {', '.join(not_meshes)}.")
    if not cameras:
        raise ValidationError("No cameras to texture from: place a ring of cameras or add cameras to the scene.")
    if not 16 <= texture_size <= 16384:
        raise ValidationError(f"The texture size must be between 16 and 16384 pixels, got {texture_size}.")
    started = time.perf_counter()
    captures: list[CameraCapture] = []
    with _rendering_as(scene, size):
        for camera in cameras:
            scene.camera = camera
            captures.append(capture_camera(scene, meshes, samples=samples))
    rendered = time.perf_counter()
    uv_maps, surfaces = [], []
    for obj in meshes:
        uv_map, uv_triangles, positions, normals = bake.mesh_corners(obj)
        uv_maps.append(uv_map)
        surfaces.append(Surface.from_mesh(obj.name, uv_triangles, positions, normals, texture_size))
    views = [View(c.camera, c.color, c.depth, c.labels) for c in captures]
    timings = {"render_s": rendered - started, "mesh_s": time.perf_counter() - rendered}
    return MultiviewPlan([obj.name for obj in meshes], uv_maps, [c.name for c in cameras], surfaces, views, timings)


def run_multiview(
    plan: MultiviewPlan, generate: ViewGenerator, on_view: Callable[[int, int], None] | None = None
) -> MultiViewResult:
    """The Blender-free middle step: generate and fuse every view (safe on a worker thread)."""
    return texture_views(plan.surfaces, plan.views, generate, on_view=on_view)


def encode_textures(result: MultiViewResult) -> list[bytes]:
    """Any thread (no bpy): each fused texture as PNG data, so that ``apply_multiview`` only packs it."""
    return [png_bytes(texture.rgba()) for texture in result.textures]


def apply_multiview(
    plan: MultiviewPlan, result: MultiViewResult, encoded: list[bytes] | None = None
) -> list[MultiviewTexture]:
    """Main thread: wire each object's texture (``encoded`` on the worker, or now) into its materials and show
    every view as a Blender image."""
    started = time.perf_counter()
    textures = []
    for name, uv_map, surface, texture, png in zip(
        plan.object_names,
        plan.uv_maps,
        plan.surfaces,
        result.textures,
        encoded if encoded is not None else encode_textures(result),
        strict=True,
    ):
        obj = bpy.data.objects.get(name)
        if obj is None:  # deleted while the views were generating
            continue
        image, materials = bake.wire_texture(obj, png, uv_map, TEXTURE_LABEL)
        seen_fraction = float(texture.seen.sum()) / max(int(surface.islands.sum()), 1)
        textures.append(MultiviewTexture(name, image, uv_map, materials, seen_fraction))
    for number, (camera_name, pixels) in enumerate(zip(plan.camera_names, result.view_images, strict=True), 1):
        show_view(f"{PREVIEW_PREFIX} {number:02d} ({camera_name})", pixels)
    result.timings["apply_s"] = time.perf_counter() - started
    return textures


def show_view(name: str, pixels: np.ndarray) -> bpy.types.Image:
    """The add-on's own preview image of one view, reused run after run and never packed (it is cheap to redo)."""
    height, width = pixels.shape[:2]
    image = bpy.data.images.get(name)
    if image is None or tuple(image.size) != (width, height):
        if image is not None:
            bpy.data.images.remove(image)
        image = bpy.data.images.new(name, width=width, height=height, alpha=True)
    rgba = np.concatenate([pixels, np.ones((height, width, 1), np.float32)], axis=2)
    image.pixels.foreach_set(np.ascontiguousarray(rgba[::-1], dtype=np.float32).ravel())
    image.update()
    return image


class SDMultiviewSettings(bpy.types.PropertyGroup):
    camera_source: EnumProperty(  # type: ignore[valid-type]
        name="Cameras",
        items=[
            ("RING", "Ring", f"The cameras in the '{CAMERA_COLLECTION}' collection (placed around the selection)"),
            ("SCENE", "Scene Cameras", "Every other camera in the scene, in name order"),
        ],
        default="RING",
    )
    count: IntProperty(name="Ring Views", default=8, min=1, max=32)  # type: ignore[valid-type]
    elevation: FloatProperty(name="Elevation", default=20.0, min=-89.0, max=89.0, subtype="ANGLE")  # type: ignore[valid-type]
    top: BoolProperty(name="Top", default=True)  # type: ignore[valid-type]
    bottom: BoolProperty(name="Bottom", default=False)  # type: ignore[valid-type]
    size: IntProperty(name="View Size", default=512, min=64, max=2048, step=64)  # type: ignore[valid-type]
    texture_size: IntProperty(name="Texture Size", default=1024, min=64, max=8192)  # type: ignore[valid-type]


def _selected_meshes(context: bpy.types.Context) -> list[bpy.types.Object]:
    return [obj for obj in context.selected_objects if obj.type == "MESH"]


class SD_OT_multiview_cameras(bpy.types.Operator):
    """Place a ring of cameras around the selected meshes (adjust them before texturing if you like)"""

    bl_idname = "sd.multiview_cameras"
    bl_label = "Place Cameras"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.sd_multiview
        try:
            cameras = ring_cameras(
                context.scene,
                _selected_meshes(context),
                count=settings.count,
                elevation_degrees=math.degrees(settings.elevation),
                top=settings.top,
                bottom=settings.bottom,
            )
        except SDCoreError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Placed {len(cameras)} cameras in '{CAMERA_COLLECTION}'.")
        return {"FINISHED"}


class SD_OT_multiview_texture(bpy.types.Operator):
    """Texture the selected meshes all around from several cameras (runs in the background)"""

    bl_idname = "sd.multiview_texture"
    bl_label = "Texture All Around"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        from .preferences import get_preferences

        scene = context.scene
        settings, sd = scene.sd_multiview, scene.sd_settings
        try:
            loras = generation.lora_specs(sd)  # a missing file is refused before the renders
            objects = _selected_meshes(context)
            if settings.camera_source == "RING" and not multiview_cameras(scene, "RING"):
                bpy.ops.sd.multiview_cameras()
            plan = plan_multiview(
                scene,
                objects,
                multiview_cameras(scene, settings.camera_source),
                size=settings.size,
                texture_size=settings.texture_size,
            )
            if not sd.model.strip():
                raise ValidationError("No model is configured: pick one in the Stable Diffusion panel.")
        except SDCoreError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        generation_settings = {  # read on the main thread: the task runs on the worker, where bpy is off limits
            "model": sd.model.strip(),
            "prompt": sd.prompt,
            "negative_prompt": sd.negative_prompt,
            "depth_model": sd.depth_model.strip() if sd.use_depth else "",
            "depth_scale": sd.depth_scale,
            "steps": sd.steps,
            "guidance": sd.guidance,
            "seed": int(np.random.default_rng().integers(2**31)) if sd.random_seed else sd.seed,
            "scheduler": sd.scheduler,
        }
        job_runner = generation.runner(get_preferences(context).engine_settings())

        def texture_all_views(engine: Engine, job: Job) -> tuple[MultiViewResult, list[bytes]]:
            generate = engine_generator(engine, loras=loras, should_cancel=job.should_cancel, **generation_settings)
            on_view = lambda index, total: job_runner.report(job, Progress(index + 1, total, 0))  # noqa: E731
            result = run_multiview(plan, generate, on_view=on_view)
            return result, encode_textures(result)

        def apply(job: Job) -> list[bpy.types.Image]:
            return [texture.image for texture in apply_multiview(plan, *job.result)]

        job_runner.submit_task(texture_all_views, context={"apply": apply})
        if not bpy.app.timers.is_registered(operators.poll_jobs):
            bpy.app.timers.register(operators.poll_jobs, first_interval=operators.POLL_INTERVAL_S)
        return {"FINISHED"}


class SD_PT_multiview(SidebarPanel, bpy.types.Panel):
    bl_label = "Multi-View Texture"
    bl_parent_id = "SD_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.sd_multiview
        layout.use_property_split = True
        layout.prop(settings, "camera_source")
        if settings.camera_source == "RING":
            col = layout.column(align=True)
            col.prop(settings, "count")
            col.prop(settings, "elevation")
            row = col.row(heading="Extra Views")
            row.prop(settings, "top")
            row.prop(settings, "bottom")
            layout.operator("sd.multiview_cameras", icon="OUTLINER_OB_CAMERA")
        layout.prop(settings, "size")
        layout.prop(settings, "texture_size")
        row = layout.row()
        row.scale_y = 1.5
        row.operator("sd.multiview_texture", icon="TEXTURE")  # progress and Cancel: the main panel


CLASSES = (
    SDMultiviewSettings,
    SD_OT_multiview_cameras,
    SD_OT_multiview_texture,
    SD_PT_multiview,
)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()
    bpy.types.Scene.sd_multiview = PointerProperty(type=SDMultiviewSettings)


def unregister() -> None:
    del bpy.types.Scene.sd_multiview
    _unregister_classes()
