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

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blender_addon.multiview_headless", description=__doc__.split("\n\n")[0])
    parser.add_argument("--blend", type=Path, help="the .blend to open (omit inside `blender -b file.blend`)")
    parser.add_argument("--model", required=True, help="checkpoint file, diffusers folder or hub id")
    parser.add_argument("--controlnet", default="", help="depth ControlNet model (omit for no depth control)")
    parser.add_argument("--control-scale", type=float, default=1.0)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
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
    parser.add_argument("--samples", type=int, default=1, help="render samples for the conditioning renders")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheduler", default="dpmpp_2m_karras")
    parser.add_argument("--out", type=Path, required=True, help="folder for texture and view PNGs")
    parser.add_argument("--save-as", type=Path, help="save the resulting .blend here (never over the input)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--allow-network", action="store_true")
    parser.add_argument("--allow-unsafe-pickle", action="store_true")
    return parser


def run(args: argparse.Namespace) -> list[str]:
    """Open, place or pick cameras, render, generate every view, bake and wire; returns the PNG paths."""
    import bpy

    from sd_core import images
    from sd_core.engine import Engine
    from sd_core.errors import ValidationError
    from sd_core.multiview import engine_generator
    from sd_core.request import EngineSettings

    from . import multiview

    if args.blend is not None:
        if not args.blend.is_file():
            raise ValidationError(f"No such .blend file: {args.blend}")
        bpy.ops.wm.open_mainfile(filepath=str(args.blend))
    if args.save_as is not None and args.blend is not None and args.save_as.resolve() == args.blend.resolve():
        raise ValidationError("--save-as must be a new file: the input .blend is never overwritten.")
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
        scene, objects, cameras, size=args.size, texture_size=args.texture_size, samples=args.samples
    )
    engine = Engine(
        EngineSettings(
            device=args.device,
            dtype=args.dtype,
            allow_network=args.allow_network,
            allow_unsafe_pickle=args.allow_unsafe_pickle,
        )
    )
    generate = engine_generator(
        engine,
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
    if args.save_as is not None:
        args.save_as.parent.mkdir(parents=True, exist_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(args.save_as.resolve()), copy=True)
    timings = {**plan.timings, **result.timings}
    print("timings: " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in timings.items()), file=sys.stderr)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    args = build_parser().parse_args(argv)
    from sd_core.errors import SDCoreError

    started = time.perf_counter()
    try:
        for path in run(args):
            print(path)
    except SDCoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"total {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if not __package__:
        from blender_addon.multiview_headless import main as package_main

        sys.exit(package_main())
    sys.exit(main())
