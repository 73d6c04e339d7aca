"""Multi-view texturing with no UI, for asset pipelines: texture the named meshes all around, save the result.

    python -m blender_addon.multiview_headless --blend scene.blend --model M [--controlnet CN] \\
        --prompt "weathered bronze statue" --select Statue [--select Plinth] \\
        [--cameras ring --count 8 --elevation 20 --top --bottom | --cameras scene] \\
        --size 512 --texture-size 1024 --out renders/ --save-as statue_textured.blend
    blender -b scene.blend --python blender_addon/multiview_headless.py -- --model M --prompt "..." ...

Writes one PNG per object texture and per view into ``--out`` and prints their paths, then a timing
line. The ring cameras are left in the saved file (collection "SD Multiview Cameras") so a re-run can
reuse adjusted ones with ``--cameras existing-ring``. Bad input prints one line and exits 2; the input
.blend is never modified.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # run as a script by `blender --python`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_parser() -> argparse.ArgumentParser:
    from . import headless

    parser = headless.common_parser("blender_addon.multiview_headless", __doc__.split("\n\n")[0])
    parser.add_argument("--select", action="append", required=True, help="mesh to texture (repeatable)")
    parser.add_argument(
        "--cameras",
        choices=["ring", "existing-ring", "scene"],
        default="ring",
        help="a new ring around the selection, the ring already in the file, or the scene's own cameras",
    )
    parser.add_argument("--count", type=int, default=8, help="ring views")
    parser.add_argument("--elevation", type=float, default=20.0, help="ring elevation in degrees")
    parser.add_argument("--top", action="store_true", help="add a view from above")
    parser.add_argument("--bottom", action="store_true", help="add a view from below")
    parser.add_argument("--size", type=int, default=512, help="square size of each generated view")
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument(
        "--samples",
        type=headless.count,
        default=1,
        help="render samples of the conditioning renders (0: the scene's own)",
    )
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(args: argparse.Namespace) -> list[str]:
    """Open, place or pick cameras, render, generate every view, bake and wire; returns the PNG paths."""
    import bpy

    from sd_core import images
    from sd_core.engine import Engine
    from sd_core.errors import ValidationError
    from sd_core.lora import check_lora_file
    from sd_core.multiview import engine_generator

    from . import headless, multiview

    for lora in args.lora:  # before the renders, so a mistyped path costs no wait
        check_lora_file(Path(lora.path).expanduser(), args.allow_unsafe_pickle)
    headless.open_blend(args)
    scene = bpy.context.scene
    missing = [name for name in args.select if name not in bpy.data.objects]
    if missing:
        raise ValidationError(f"No object named {', '.join(missing)} in this scene.")
    objects = [bpy.data.objects[name] for name in args.select]
    if args.cameras == "ring":
        multiview.ring_cameras(
            scene, objects, count=args.count, elevation_degrees=args.elevation, top=args.top, bottom=args.bottom
        )
    cameras = multiview.multiview_cameras(scene, "SCENE" if args.cameras == "scene" else "RING")
    plan = multiview.plan_multiview(
        scene, objects, cameras, size=args.size, texture_size=args.texture_size, samples=args.samples or None
    )
    engine = Engine(headless.engine_settings(args))
    generate = engine_generator(
        engine,
        loras=tuple(args.lora),
        model=args.model,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        depth_model=args.controlnet,
        depth_scale=args.control_scale,
        steps=args.steps,
        guidance=args.guidance,
        strength=args.strength,
        seed=args.seed,
        scheduler=args.scheduler,
    )
    result = multiview.run_multiview(
        plan, generate, on_view=lambda index, total: print(f"view {index + 1}/{total}", file=sys.stderr)
    )
    textures = multiview.apply_multiview(plan, result)

    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for texture, fused in zip(textures, result.textures, strict=True):
        path = args.out / f"{bpy.path.clean_name(texture.object_name)}_texture.png"
        images.to_pil(fused.color).save(path)
        paths.append(str(path))
    for number, (camera, pixels) in enumerate(zip(plan.camera_names, result.view_images, strict=True), 1):
        path = args.out / f"view_{number:02d}_{bpy.path.clean_name(camera)}.png"
        images.to_pil(pixels).save(path)
        paths.append(str(path))
    headless.save_copy(args)
    timings = {**plan.timings, **result.timings}
    print("timings: " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in timings.items()), file=sys.stderr)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    from . import headless

    started = time.perf_counter()
    code = headless.command_main(build_parser(), run, argv)
    print(f"total {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    if not __package__:
        from blender_addon.multiview_headless import main as package_main

        sys.exit(package_main())
    sys.exit(main())
