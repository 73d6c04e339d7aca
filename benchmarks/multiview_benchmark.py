"""The diffusion side of multi-view texturing on a GPU: 8 views at 512², SD1.5-size random weights.

The GPU machine has no Blender, so the conditioning comes from ``sd_core.testing.multiview_scene``
(two ray-cast spheres, 7 ring views + 1 top view: the depth and labels Blender would give). The loop
is the real one: ``sd_core.multiview.texture_views`` with ``engine_generator`` (depth-ControlNet
inpainting through the public ``Engine.generate``), then fusion and fill at the real texture size.

    python benchmarks/multiview_benchmark.py --out benchmarks/results/multiview_h200.json

Reports load + first view, then per run: total, diffusion, fusion (CPU), views generated, s/view.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_benchmark import build_random_models
from sd_core.engine import Engine
from sd_core.multiview import ViewTask, engine_generator, texture_views
from sd_core.request import EngineSettings
from sd_core.testing import multiview_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ring", type=int, default=7, help="ring views (one top view is added)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    report: dict[str, object] = {"card": torch.cuda.get_device_name(0), "args": {**vars(args), "out": str(args.out)}}
    started = time.perf_counter()
    views = multiview_scene.ring(args.size, count=args.ring, top=True)
    surfaces = multiview_scene.surfaces(args.texture_size)
    report["synthetic_scene_s"] = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        model_dir, controlnet_dir = build_random_models("sd1", Path(folder))
        report["build_weights_s"] = time.perf_counter() - started
        engine = Engine(EngineSettings(device="cuda"))
        generate = engine_generator(
            engine,
            model=str(model_dir),
            prompt="a weathered bronze statue",
            depth_model=str(controlnet_dir),
            steps=args.steps,
            seed=7,
        )
        per_view: list[float] = []

        def timed_generate(task: ViewTask) -> np.ndarray:
            view_started = time.perf_counter()
            pixels = generate(task)
            per_view.append(time.perf_counter() - view_started)
            return pixels

        started = time.perf_counter()
        first = texture_views(surfaces, views[:1], timed_generate)  # loads weights, warms every kernel
        report["load_and_first_view_s"] = time.perf_counter() - started
        report["first_view_s"] = first.timings["generate_s"]

        runs = []
        for _ in range(args.repeats):
            per_view.clear()
            started = time.perf_counter()
            result = texture_views(surfaces, views, timed_generate)
            total = time.perf_counter() - started
            runs.append(
                {
                    "total_s": total,
                    **result.timings,
                    "views_generated": int(sum(result.generated)),
                    "per_view_s": list(per_view),
                    "mask_fraction": [float(mask.mean()) for mask in result.view_masks],
                    "seen_fraction": [
                        float(t.seen.sum() / s.islands.sum()) for t, s in zip(result.textures, surfaces, strict=True)
                    ],
                }
            )
            fusion = result.timings["fuse_s"] + result.timings["visibility_s"]
            print(
                f"run: {total:.2f} s total, diffusion {result.timings['generate_s']:.2f} s for "
                f"{sum(result.generated)} views, fusion {fusion:.2f} s, fill {result.timings['fill_s']:.2f} s",
                flush=True,
            )
        report["runs"] = runs
        report["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
