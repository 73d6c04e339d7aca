"""Time from Generate to image, excluding diffusion, at 1024²: capture, hand-over and write-back.

    .venv/bin/python benchmarks/addon_overhead.py [--size 1024] [--samples 1]

Builds a small scene (a subdivided sphere and a cube on a floor), then times each stage the add-on
runs around a generation. On Blender's main thread: the camera capture (one Cycles render with depth
and object-index passes), building the request (depth -> ControlNet image) and reading the selected
meshes, then loading the result (Blender image + history) and wiring the projected textures in. On the
worker thread, after the diffusion: writing the result PNG and projecting the image into the meshes' textures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="blender-user-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bpy
import numpy as np


def build_scene(size: int, samples: int) -> list[bpy.types.Object]:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = size
    bpy.ops.mesh.primitive_plane_add(size=8)
    bpy.ops.mesh.primitive_uv_sphere_add(segments=128, ring_count=64, location=(0.8, 0, 1))
    sphere = bpy.context.object
    bpy.ops.mesh.primitive_cube_add(size=1.2, location=(-1.2, 0.5, 0.6))
    cube = bpy.context.object
    bpy.ops.object.camera_add(location=(0, -6, 3.5), rotation=(np.radians(60), 0, 0))
    scene.camera = bpy.context.object
    bpy.ops.object.select_all(action="DESELECT")
    for obj in (sphere, cube):
        obj.select_set(True)
    return [sphere, cube]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=1)
    args = parser.parse_args()
    objects = build_scene(args.size, args.samples)
    import addon_utils  # importable only once bpy is

    addon_utils.enable("blender_addon", default_set=True)
    from blender_addon import generation, writeback
    from sd_core.request import GeneratedImage

    settings = bpy.context.scene.sd_settings
    settings.model, settings.depth_model, settings.prompt = "unused", "unused", "timing"
    settings.project_to_selected = True
    settings.capture_samples = args.samples
    settings.output_dir = tempfile.mkdtemp() + "/"
    timings = {}
    start = time.perf_counter()
    plan = generation.plan_generation(bpy.context)
    timings["capture + request + mesh data (render, passes, depth map)"] = time.perf_counter() - start
    pixels = np.random.default_rng(0).random((args.size, args.size, 3), dtype=np.float32)
    generated = GeneratedImage(pixels, seed=1, metadata={"prompt": "timing", "seed": 1})
    worker_timings = {}
    start = time.perf_counter()
    path = writeback.write_png(generated, plan.output_folder)
    worker_timings["write the result PNG"] = time.perf_counter() - start
    start = time.perf_counter()
    image = writeback.load_result(generated, path)
    writeback.add_history(bpy.context.scene, image, 1)
    timings["load result (image + history)"] = time.perf_counter() - start
    from blender_addon import bake

    start = time.perf_counter()
    projections = bake.project_textures(pixels, plan.camera_capture, plan.surfaces, texture_size=args.size)
    worker_timings[f"project onto {len(objects)} meshes ({args.size}² textures)"] = time.perf_counter() - start
    start = time.perf_counter()
    bake.wire_projections(projections)
    timings[f"wire {len(objects)} projected textures ({args.size}²)"] = time.perf_counter() - start
    print("Blender's main thread:")
    for stage, seconds in timings.items():
        print(f"  {stage:58s} {seconds * 1000:8.0f} ms")
    print(f"  {'total, excluding diffusion':58s} {sum(timings.values()) * 1000:8.0f} ms")
    print("The worker thread, after the diffusion:")
    for stage, seconds in worker_timings.items():
        print(f"  {stage:58s} {seconds * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
