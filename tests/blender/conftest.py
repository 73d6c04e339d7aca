"""Real-Blender tests: one bpy per process, a factory-fresh empty scene per test.

bpy can be imported only once per process, so every Blender test shares this pytest process;
``BLENDER_USER_RESOURCES`` points at a temp dir before the import so no test reads or writes the
user's Blender config.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence

import pytest

os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="blender_user_")
import bpy  # only after BLENDER_USER_RESOURCES is set

RENDER_WIDTH, RENDER_HEIGHT = 96, 72
LENS_MM, SENSOR_MM = 50.0, 36.0


class SceneBuilder:
    """Builds small, exactly known test scenes: a Cycles CPU camera looking down -Z, emissive quads."""

    def __init__(self, scene: bpy.types.Scene) -> None:
        self.scene = scene

    def camera(self, location: Sequence[float] = (0.0, 0.0, 10.0), rotation_x_degrees: float = 0.0) -> bpy.types.Object:
        """A 50 mm / 36 mm sensor camera; with no rotation it looks straight down -Z."""
        data = bpy.data.cameras.new("Camera")
        data.lens, data.sensor_width = LENS_MM, SENSOR_MM
        camera = bpy.data.objects.new("Camera", data)
        camera.location = location
        camera.rotation_euler = (math.radians(rotation_x_degrees), 0.0, 0.0)
        self.scene.collection.objects.link(camera)
        self.scene.camera = camera
        return camera

    def emission_material(self, name: str, color: Sequence[float]) -> bpy.types.Material:
        """Unlit: with the Standard view transform a pixel shows exactly its (sRGB-encoded) colour."""
        material = bpy.data.materials.new(name)
        tree = material.node_tree
        tree.nodes.clear()
        emission = tree.nodes.new("ShaderNodeEmission")
        emission.inputs["Color"].default_value = (*color, 1.0)
        output = tree.nodes.new("ShaderNodeOutputMaterial")
        tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
        return material

    def quad(
        self,
        name: str,
        corners: Sequence[Sequence[float]],
        material: bpy.types.Material | None = None,
        *,
        with_uvs: bool = True,
    ) -> bpy.types.Object:
        """A one-face mesh through four corners (counter-clockwise seen from its front), UVs 0..1."""
        mesh = bpy.data.meshes.new(name)
        mesh.from_pydata([tuple(corner) for corner in corners], [], [(0, 1, 2, 3)])
        if with_uvs:
            mesh.uv_layers.new(name="UVMap").uv.foreach_set("vector", (0, 0, 1, 0, 1, 1, 0, 1))
        if material is not None:
            mesh.materials.append(material)
        obj = bpy.data.objects.new(name, mesh)
        self.scene.collection.objects.link(obj)
        return obj


@pytest.fixture
def scene() -> bpy.types.Scene:
    """A factory-fresh empty scene rendering with Cycles on the CPU: small, few samples, Standard view."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = RENDER_WIDTH, RENDER_HEIGHT
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    return scene


@pytest.fixture
def build(scene: bpy.types.Scene) -> SceneBuilder:
    return SceneBuilder(scene)
