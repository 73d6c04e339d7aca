"""Project onto selected meshes: bake a generated image, seen from the capture camera, into UV textures.

Why per-texel numpy instead of a Cycles bake: the work per texel is tiny (interpolate a position,
project it, compare one depth, sample one pixel) and exact in closed form, and the occlusion test must
use the *captured* depth map - the one the image was generated from - which a camera-projected
texture coordinate in a Cycles bake cannot read without another depth render. The rasteriser and all
projection maths live in ``sd_core.projection`` (Blender-free, unit-tested); this module only pulls
mesh data out of Blender with ``foreach_get`` and packs the result back as PNG data.

Three steps, so the Generate button keeps Blender responsive: ``read_surfaces`` (main thread, when
planning), ``project_textures`` (no bpy: the worker runs it after the diffusion, PNG encoding included;
about 1.0 s for two meshes at 1024² on a 2-core CPU) and ``wire_projections`` (main thread, at write-back:
packing the ready PNG data and wiring materials, milliseconds).
``project_onto_meshes`` runs all three where it is called.

Per object: the active render UV map is used (one is made with Smart UV Project only when the mesh
has none), the *evaluated* mesh (modifiers applied, as rendered) is rasterised in UV space, and a NEW
image is created - alpha 1 where the camera saw the surface, 0 where it was hidden or turned away -
and layered over each material's base colour with a Mix node, so the old input stays linked under it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import bpy
import numpy as np

from sd_core.errors import ValidationError
from sd_core.images import png_bytes
from sd_core.projection import project_to_texture

from .capture import CameraCapture

PROJECTION_UV_NAME = "SD Projection UV"
NODE_LABEL = "SD Projection"
COLOR_INPUTS = ("Base Color", "Color")
"""Shader inputs the projected texture is layered over: Principled BSDF, then Diffuse/Emission/..."""


@dataclass(frozen=True)
class ProjectedTexture:
    """What one object received: its new image, the UV map it is laid out in, the materials now using it.

    ``seen_fraction`` is the share of the object's UV texels the camera saw (0 means nothing landed).
    """

    object_name: str
    image: bpy.types.Image
    uv_map: str
    materials: tuple[str, ...]
    seen_fraction: float


@dataclass(frozen=True)
class MeshSurface:
    """What projecting needs of one mesh, read from Blender on the main thread: its UV map and, per triangle
    corner of the evaluated mesh, UVs (T, 3, 2), world positions and unit normals (T, 3, 3)."""

    object_name: str
    uv_map: str
    uv_triangles: np.ndarray
    positions: np.ndarray
    normals: np.ndarray


@dataclass(frozen=True)
class Projection:
    """One mesh's projected texture, computed and encoded off the main thread, to be wired in."""

    surface: MeshSurface
    png: bytes
    seen_fraction: float


def project_onto_meshes(
    image: np.ndarray,
    capture: CameraCapture,
    objects: Iterable[bpy.types.Object],
    *,
    texture_size: int = 1024,
    padding: int = 4,
    min_facing: float = 0.0,
    relative_tolerance: float = 0.005,
) -> list[ProjectedTexture]:
    """Bake ``image`` (H, W, 3 display sRGB, top row first), generated for ``capture``, onto each mesh.

    Texels hidden behind other geometry in ``capture.depth``, turned away from the camera (facing
    <= ``min_facing``) or outside the frame stay transparent, so the old material shows there.
    ``padding`` texels of colour are added past UV island edges against seams. Everything is checked
    before anything is changed. The three steps on the calling thread; the Generate button runs the
    middle one, ``project_textures``, on the worker (``generation.py``).
    """
    meshes = list(objects)
    check_meshes(meshes)
    _check_image(image, capture, texture_size)  # before read_surfaces may give a mesh a UV map
    projections = project_textures(
        image,
        capture,
        read_surfaces(meshes),
        texture_size=texture_size,
        padding=padding,
        min_facing=min_facing,
        relative_tolerance=relative_tolerance,
    )
    return wire_projections(projections)


def read_surfaces(meshes: list[bpy.types.Object]) -> list[MeshSurface]:
    """Main thread: each mesh's UV map (made only if it has none) and corner data."""
    check_meshes(meshes)
    return [MeshSurface(obj.name, *mesh_corners(obj)) for obj in meshes]


def project_textures(
    image: np.ndarray,
    capture: CameraCapture,
    surfaces: list[MeshSurface],
    *,
    texture_size: int = 1024,
    padding: int = 4,
    min_facing: float = 0.0,
    relative_tolerance: float = 0.005,
) -> list[Projection]:
    """Any thread (no bpy): project ``image`` into each surface's UV texture (``project_onto_meshes``)."""
    _check_image(image, capture, texture_size)
    picture = np.asarray(image, dtype=np.float32)
    projections = []
    for surface in surfaces:
        projected = project_to_texture(
            capture.camera,
            picture,
            capture.depth,
            surface.uv_triangles,
            surface.positions,
            surface.normals,
            texture_size,
            texture_size,
            relative_tolerance=relative_tolerance,
        )
        seen = projected.weight > min_facing
        island_texels = max(int(projected.islands.sum()), 1)
        png = png_bytes(projected.rgba(min_facing=min_facing, padding=padding))  # here: off the main thread
        projections.append(Projection(surface, png, float(seen.sum()) / island_texels))
    return projections


def wire_projections(projections: list[Projection]) -> list[ProjectedTexture]:
    """Main thread: store each projection as a new image layered over its object's materials (objects
    deleted since they were read are skipped)."""
    results = []
    for projection in projections:
        obj = bpy.data.objects.get(projection.surface.object_name)
        if obj is None or obj.type != "MESH":
            continue
        uv_map = projection.surface.uv_map
        texture, materials = wire_texture(obj, projection.png, uv_map)
        results.append(ProjectedTexture(obj.name, texture, uv_map, materials, projection.seen_fraction))
    return results


def mesh_corners(obj: bpy.types.Object) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """The object's render UV map (made only if it has none) and, per triangle corner of the evaluated
    mesh, its UVs (T, 3, 2), world positions and unit normals (T, 3, 3): what texturing needs of a mesh."""
    uv_map = _ensure_uv_map(obj)
    return (uv_map, *_corner_data(obj, uv_map))


def wire_texture(
    obj: bpy.types.Object, png: bytes, uv_map: str, name: str = NODE_LABEL
) -> tuple[bpy.types.Image, tuple[str, ...]]:
    """Pack ``png`` (top-row-first straight RGBA as PNG data: ``png_bytes``) as a new image ``"<object> <name>"``
    and layer it (by its alpha) over the object's materials in ``uv_map``; returns the image and the materials
    now using it."""
    image = _new_image(f"{obj.name} {name}", png)
    return image, _layer_over_materials(obj, image, uv_map)


def check_meshes(meshes: list[bpy.types.Object]) -> None:
    if not meshes:
        raise ValidationError("Nothing is selected: select the mesh objects to project the image onto.")
    not_meshes = [obj.name for obj in meshes if obj.type != "MESH"]
    if not_meshes:
        raise ValidationError(f"Only meshes can receive a projected texture; deselect: {', '.join(not_meshes)}.")


def _check_image(image: np.ndarray, capture: CameraCapture, texture_size: int) -> None:
    if np.ndim(image) != 3 or np.shape(image)[2] != 3 or not np.isfinite(image).all():
        raise ValidationError(f"The image to project must be a finite (height, width, 3) array, got {np.shape(image)}.")
    image_aspect = image.shape[1] / image.shape[0]
    capture_aspect = capture.width / capture.height
    if abs(image_aspect / capture_aspect - 1.0) > 0.01:
        raise ValidationError(
            f"The image ({image.shape[1]}x{image.shape[0]}) does not have the captured view's shape "
            f"({capture.width}x{capture.height}), so it cannot be projected from that camera."
        )
    if not 16 <= texture_size <= 16384:
        raise ValidationError(f"The texture size must be between 16 and 16384 pixels, got {texture_size}.")


def _ensure_uv_map(obj: bpy.types.Object) -> str:
    """The UV map the renderer uses (active for render); a Smart UV Project one only if the mesh has none."""
    uv_layers = obj.data.uv_layers
    if len(uv_layers):
        return next((layer.name for layer in uv_layers if layer.active_render), uv_layers[0].name)
    name = uv_layers.new(name=PROJECTION_UV_NAME).name  # read now: edit mode reallocates the layer
    _smart_uv_project(obj)
    return name


def _smart_uv_project(obj: bpy.types.Object) -> None:
    """Unwrap ``obj``'s active UV map; the operator needs edit mode, entered and left around it."""
    view_layer = bpy.context.view_layer
    previous_active = view_layer.objects.active
    view_layer.objects.active = obj
    try:
        with bpy.context.temp_override(
            active_object=obj, object=obj, selected_objects=[obj], selected_editable_objects=[obj]
        ):
            bpy.ops.object.mode_set(mode="EDIT")
            try:
                bpy.ops.mesh.select_all(action="SELECT")
                bpy.ops.uv.smart_project(island_margin=0.02)
            finally:
                bpy.ops.object.mode_set(mode="OBJECT")
    finally:
        view_layer.objects.active = previous_active


def _corner_data(obj: bpy.types.Object, uv_map: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per triangle corner of the evaluated mesh: UVs (T, 3, 2), world positions and unit normals (T, 3, 3)."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        corner_loops = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int64)
        mesh.loop_triangles.foreach_get("loops", corner_loops)
        loop_vertices = np.empty(len(mesh.loops), dtype=np.int64)
        mesh.loops.foreach_get("vertex_index", loop_vertices)
        vertex_positions = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
        mesh.vertices.foreach_get("co", vertex_positions)
        loop_uvs = np.empty(len(mesh.loops) * 2, dtype=np.float64)
        mesh.uv_layers[uv_map].uv.foreach_get("vector", loop_uvs)
        loop_normals = np.empty(len(mesh.loops) * 3, dtype=np.float64)
        mesh.corner_normals.foreach_get("vector", loop_normals)
        world = np.array(evaluated.matrix_world, dtype=np.float64)
    finally:
        evaluated.to_mesh_clear()

    positions = vertex_positions.reshape(-1, 3)[loop_vertices[corner_loops]] @ world[:3, :3].T + world[:3, 3]
    normals = loop_normals.reshape(-1, 3)[corner_loops] @ np.linalg.inv(world[:3, :3])  # inverse transpose
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    uvs = loop_uvs.reshape(-1, 2)[corner_loops]
    return uvs.reshape(-1, 3, 2), positions.reshape(-1, 3, 3), normals.reshape(-1, 3, 3)


def _new_image(name: str, png: bytes) -> bpy.types.Image:
    """A new image packed from the PNG data (so it survives saving the .blend); Blender decodes it when first
    shown, and nothing is encoded here on the main thread."""
    image = bpy.data.images.new(name, width=1, height=1, alpha=True)  # its size comes from the PNG
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"
    image.filepath_raw = f"//textures/{bpy.path.clean_name(image.name)}.png"  # where "Unpack" would write it
    image.alpha_mode = "STRAIGHT"
    return image


def _layer_over_materials(obj: bpy.types.Object, image: bpy.types.Image, uv_map: str) -> tuple[str, ...]:
    """Layer ``image`` over each of the object's materials; give it a new material only if it has none.

    A material that other objects use too (or a linked, read-only one) is copied first, so the image
    lands on this object only; objects sharing one mesh still share its materials.
    """
    if not any(slot.material for slot in obj.material_slots):
        material = bpy.data.materials.new(f"{obj.name} {NODE_LABEL}")
        if obj.material_slots:
            obj.material_slots[0].material = material
        else:
            obj.data.materials.append(material)
    layered: list[str] = []
    replacements: dict[bpy.types.Material, bpy.types.Material] = {}
    for slot in obj.material_slots:
        if slot.material is None:
            continue
        if slot.material not in replacements:
            material = slot.material
            if material.library is not None or _used_by_other_objects(material, obj):
                material = material.copy()
            replacements[slot.material] = material
            if _layer_over_material(material, image, uv_map):
                layered.append(material.name)
        slot.material = replacements[slot.material]
    return tuple(layered)


def _used_by_other_objects(material: bpy.types.Material, obj: bpy.types.Object) -> bool:
    return any(
        other is not obj and any(slot.material == material for slot in other.material_slots)
        for other in bpy.data.objects
    )


def _layer_over_material(material: bpy.types.Material, image: bpy.types.Image, uv_map: str) -> bool:
    """Mix the image (by its alpha) over the surface shader's colour input; False if there is none."""
    tree = material.node_tree
    if tree is None:
        return False
    outputs = [node for node in tree.nodes if node.bl_idname == "ShaderNodeOutputMaterial"]
    output = next((node for node in outputs if node.is_active_output), outputs[0] if outputs else None)
    if output is None or not output.inputs["Surface"].links:
        return False
    shader = output.inputs["Surface"].links[0].from_node
    target = next((shader.inputs[name] for name in COLOR_INPUTS if name in shader.inputs), None)
    if target is None:
        return False

    x, y = shader.location
    uv_node = _labelled(tree.nodes.new("ShaderNodeUVMap"), (x - 760, y - 200))
    uv_node.uv_map = uv_map
    texture = _labelled(tree.nodes.new("ShaderNodeTexImage"), (x - 560, y - 200))
    texture.image = image
    texture.extension = "EXTEND"
    mix = _labelled(tree.nodes.new("ShaderNodeMix"), (x - 240, y))
    mix.data_type = "RGBA"
    mix.blend_type = "MIX"
    sockets = {socket.identifier: socket for socket in mix.inputs}
    under = sockets["A_Color"]
    if target.links:  # keep the old colour source linked under the projection
        tree.links.new(target.links[0].from_socket, under)
    else:
        under.default_value = target.default_value
    tree.links.new(uv_node.outputs["UV"], texture.inputs["Vector"])
    tree.links.new(texture.outputs["Color"], sockets["B_Color"])
    tree.links.new(texture.outputs["Alpha"], sockets["Factor_Float"])
    tree.links.new(next(s for s in mix.outputs if s.identifier == "Result_Color"), target)
    return True


def _labelled(node: bpy.types.Node, location: tuple[float, float]) -> bpy.types.Node:
    node.label = NODE_LABEL
    node.location = location
    return node
