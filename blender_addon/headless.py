"""The whole loop with no UI, for asset pipelines: render the scene camera, generate, write back.

Two ways to run it (same arguments):

    python -m blender_addon.headless --blend scene.blend --model M --prompt "..." --out DIR
    blender -b scene.blend --python blender_addon/headless.py -- --model M --prompt "..." --out DIR

It drives the same planning, job runner and write-back as the Generate button, but waits for the
job instead of polling it from a timer. Bad input prints one line and exits 2; the .blend given is
never modified: with ``--save-as`` the result is saved to a new file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if not __package__:  # run as a script by `blender --python`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from sd_core.request import EngineSettings

EXIT_USER_ERROR = 2


def common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The arguments every headless command shares: the file, the models, the prompt, where results go."""
    from sd_core.request import LoraSpec

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--blend", type=Path, help="the .blend to open (omit inside `blender -b file.blend`)")
    parser.add_argument("--model", required=True, help="checkpoint file, diffusers folder or hub id")
    parser.add_argument("--controlnet", default="", help="depth ControlNet model (omit for no depth control)")
    parser.add_argument("--control-scale", type=float, default=1.0)
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        type=LoraSpec.from_argument,
        metavar="PATH[:SCALE]",
        help="a LoRA to merge, at SCALE (1 as trained) if given (repeatable)",
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--scheduler", default="dpmpp_2m_karras")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--save-as", type=Path, help="save the resulting .blend here (never over the input)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--allow-network", action="store_true")
    parser.add_argument("--allow-unsafe-pickle", action="store_true")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = common_parser("blender_addon.headless", __doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["txt2img", "img2img", "inpaint"], default="img2img")
    parser.add_argument("--select", action="append", default=[], help="object to select (repeatable)")
    parser.add_argument("--project", action="store_true", help="bake the result into the selected meshes")
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--strength", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--width", type=int, help="override the render width")
    parser.add_argument("--height", type=int, help="override the render height")
    parser.add_argument(
        "--capture-samples", type=count, default=16, help="render samples of the camera capture (0: the scene's own)"
    )
    return parser


def count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not a count: give 0 or more")
    return value


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    from sd_core.request import EngineSettings

    return EngineSettings(
        device=args.device,
        dtype=args.dtype,
        allow_network=args.allow_network,
        allow_unsafe_pickle=args.allow_unsafe_pickle,
    )


def open_blend(args: argparse.Namespace) -> None:
    """Open ``--blend`` (if given) after checking that ``--save-as`` would not overwrite it."""
    import bpy

    from sd_core.errors import ValidationError

    if args.blend is not None:
        if not args.blend.is_file():
            raise ValidationError(f"No such .blend file: {args.blend}")
        if args.save_as is not None and args.save_as.resolve() == args.blend.resolve():
            raise ValidationError("--save-as must be a new file: the input .blend is never overwritten.")
        bpy.ops.wm.open_mainfile(filepath=str(args.blend))


def save_copy(args: argparse.Namespace) -> None:
    """Save the result to ``--save-as`` as a copy; the opened file stays untouched."""
    import bpy

    if args.save_as is not None:
        args.save_as.parent.mkdir(parents=True, exist_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(args.save_as.resolve()), copy=True)


def command_main(
    parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], list[str]], argv: Sequence[str] | None
) -> int:
    """Parse (after Blender's ``--``), run, print the written paths; artist errors: one line, exit 2."""
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    args = parser.parse_args(argv)
    from sd_core.errors import SDCoreError

    try:
        for path in run(args):
            print(path)
    except SDCoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _ensure_registered() -> None:
    """Register the add-on's classes unless Blender already enabled it (as an extension or add-on)."""
    import bpy

    if hasattr(bpy.types.Scene, "sd_settings"):
        return
    import blender_addon

    blender_addon.register()


def _apply_arguments(args: argparse.Namespace) -> None:
    """Fill the panel's settings, so that a headless run plans exactly as the Generate button does."""
    import bpy

    from .properties import set_loras

    scene = bpy.context.scene
    settings = scene.sd_settings
    settings.model = args.model
    settings.prompt = args.prompt
    settings.negative_prompt = args.negative_prompt
    settings.source = "CAMERA"
    settings.mode = args.mode.upper()
    settings.strength = args.strength
    settings.steps = args.steps
    settings.guidance = args.guidance
    settings.random_seed = args.seed is None
    settings.seed = args.seed or 0
    settings.scheduler = args.scheduler
    settings.use_depth = bool(args.controlnet)
    settings.depth_model = args.controlnet
    settings.depth_scale = args.control_scale
    set_loras(settings, ({"path": lora.path, "scale": lora.scale} for lora in args.lora))
    settings.project_to_selected = args.project
    settings.capture_samples = args.capture_samples
    settings.bake_resolution = args.texture_size
    settings.output_dir = str(args.out.resolve()) + "/"
    settings.size_from_render = not (args.width or args.height)
    settings.width = args.width or scene.render.resolution_x
    settings.height = args.height or scene.render.resolution_y
    if args.select:
        missing = [name for name in args.select if name not in bpy.data.objects]
        if missing:
            from sd_core.errors import ValidationError

            raise ValidationError(f"No object named {', '.join(missing)} in this scene.")
        for obj in scene.objects:
            obj.select_set(obj.name in args.select)


def run(args: argparse.Namespace) -> list[str]:
    """Open, plan, generate (waiting), write back; returns the written PNG paths."""
    import bpy

    from sd_core.errors import SDCoreError

    from . import generation

    open_blend(args)
    _ensure_registered()
    _apply_arguments(args)
    settings = engine_settings(args)
    job = generation.submit(bpy.context, settings)
    steps_done = 0
    runner = generation.runner(settings)
    while not job.finished.wait(0.5):
        for event in runner.poll():
            progress = event.job.progress
            if event.kind == "started":
                print("loading models and preparing the GPU...", file=sys.stderr)
            elif event.kind == "progress" and progress is not None and progress.step != steps_done:
                steps_done = progress.step
                print(f"step {progress.step}/{progress.total}", file=sys.stderr)
    runner.poll()
    if job.state != "done":
        raise SDCoreError(job.error or f"Generation {job.state}.")
    images = generation.apply_finished(job)
    save_copy(args)
    return [bpy.path.abspath(image.filepath) for image in images]


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(build_parser(), run, argv)


if __name__ == "__main__":
    if not __package__:
        from blender_addon.headless import main as package_main

        sys.exit(package_main())
    sys.exit(main())
