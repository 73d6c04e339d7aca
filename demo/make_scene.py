"""Rebuild demo/scene.blend: a small still life the demo renders, generates over and textures.

Run with the dev environment: `.venv/bin/python demo/make_scene.py`. The .blend is committed so the
demo needs no build step; this script records exactly what is in it.
"""

from __future__ import annotations

import math
from pathlib import Path

import bpy

SCENE_PATH = Path(__file__).resolve().parent / "scene.blend"


def _material(name: str, color: tuple[float, float, float]) -> bpy.types.Material:
    material = bpy.data.materials.new(name)
    principled = material.node_tree.nodes["Principled BSDF"]
    principled.inputs["Base Color"].default_value = (*color, 1.0)
    return material


def build() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 8
    scene.render.resolution_x = 256
    scene.render.resolution_y = 256
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"

    bpy.ops.mesh.primitive_plane_add(size=6.0, location=(0.0, 0.0, 0.0))
    bpy.context.object.name = "Ground"
    bpy.context.object.data.materials.append(_material("Ground", (0.5, 0.45, 0.4)))
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(-1.1, 0.3, 0.5))
    bpy.context.object.name = "Crate"
    bpy.context.object.data.materials.append(_material("Crate", (0.6, 0.3, 0.1)))
    bpy.ops.mesh.primitive_monkey_add(size=1.2, location=(0.9, -0.2, 0.75), rotation=(0.0, 0.0, math.radians(20)))
    bpy.context.object.name = "Suzanne"
    bpy.ops.object.shade_smooth()
    bpy.context.object.data.materials.append(_material("Suzanne", (0.2, 0.4, 0.8)))

    bpy.ops.object.light_add(type="SUN", rotation=(math.radians(40), 0.0, math.radians(30)))
    bpy.context.object.data.energy = 3.0
    bpy.ops.object.camera_add(location=(0.0, -5.5, 3.0), rotation=(math.radians(62), 0.0, 0.0))
    scene.camera = bpy.context.object
    world = bpy.data.worlds.new("World")
    world.color = (0.05, 0.05, 0.06)
    scene.world = world
    bpy.ops.wm.save_as_mainfile(filepath=str(SCENE_PATH), compress=True)


if __name__ == "__main__":
    build()
    print(f"wrote {SCENE_PATH}")
