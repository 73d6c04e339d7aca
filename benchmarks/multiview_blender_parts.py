"""The Blender side of multi-view texturing on the CPU: conditioning renders, mesh extraction, fusion, wiring.

The diffusion is replaced by the deterministic world-position painter of the tests (it costs ~nothing),
so what is timed is everything around the model: ``benchmarks/multiview_benchmark.py`` times the model
on a GPU. Scene: a cube and a 64x32 UV sphere, Cycles on the CPU.

    .venv/bin/python benchmarks/multiview_blender_parts.py --views 8 --size 512 --texture-size 1024
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="blender_user_"))

import bpy

from blender_addon import multiview
from tests.multiview_fakes import consistent_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=8, help="ring views, one of them replaced by a top view")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=1)
    args = parser.parse_args()

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.use_denoising = False
    bpy.ops.mesh.primitive_cube_add(size=1.6, location=(-1.1, 0.0, 0.0))
    cube = bpy.context.active_object
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.9, segments=64, ring_count=32, location=(1.0, 0.3, 0.1))
    sphere = bpy.context.active_object
    objects = [cube, sphere]

    started = time.perf_counter()
    cameras = multiview.ring_cameras(scene, objects, count=args.views - 1, top=True)
    placed = time.perf_counter()
    plan = multiview.plan_multiview(
        scene, objects, cameras, size=args.size, texture_size=args.texture_size, samples=args.samples
    )
    planned = time.perf_counter()
    result = multiview.run_multiview(plan, consistent_generator)
    fused = time.perf_counter()
    multiview.apply_multiview(plan, result)
    applied = time.perf_counter()
    report = {
        "place_cameras_s": placed - started,
        **plan.timings,
        "texture_views_s (fake generator)": fused - planned,
        **{f"  {name}": seconds for name, seconds in result.timings.items() if name != "apply_s"},
        "apply_s (images + materials)": applied - fused,
        "blender_side_total_s": applied - started - result.timings["generate_s"],
    }
    print(json.dumps({"args": vars(args), **report}, indent=2))


if __name__ == "__main__":
    main()
