"""The main job, headless: render demo/scene.blend, generate over it, texture Suzanne, save the result.

    scripts/dev.sh demo                      # tiny offline model built here (random weights: noise-like)
    scripts/dev.sh demo --model PATH --controlnet PATH   # a real checkpoint and depth ControlNet

With no --model it uses tiny randomly initialised models the project builds itself (no weights can be
downloaded here), so the images are noise; every step of the loop is real.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/dev.sh demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint / diffusers folder / hub id (default: the tiny test model)")
    parser.add_argument("--controlnet", help="depth ControlNet (default: the tiny test ControlNet)")
    parser.add_argument("--prompt", default="a weathered bronze statue of a monkey on a wooden crate, studio light")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "output" / "demo")
    args = parser.parse_args()

    started = time.perf_counter()
    if args.model is None or args.controlnet is None:
        from sd_core.testing.tiny_models import build_all

        tiny = build_all(ROOT / ".cache" / "tiny-models")
        args.model = args.model or str(tiny["sd1_single"])
        args.controlnet = args.controlnet or str(tiny["sd1_controlnet"])

    from blender_addon import headless

    argv = [
        "--blend", str(ROOT / "demo" / "scene.blend"),
        "--model", args.model,
        "--controlnet", args.controlnet,
        "--prompt", args.prompt,
        "--mode", "img2img",
        "--strength", "0.8",
        "--steps", str(args.steps),
        "--seed", "42",
        "--select", "Suzanne",
        "--project",
        "--texture-size", "512",
        "--out", str(args.out),
        "--save-as", str(args.out / "scene_textured.blend"),
    ]  # fmt: skip
    code = headless.main(argv)
    if code == 0:
        print(f"demo finished in {time.perf_counter() - started:.1f} s; results in {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
