"""``python -m sd_core generate ...``: the engine from a shell, for pipelines and tests.

The mode follows from the inputs: ``--image`` + ``--mask`` inpaints, ``--image`` alone is img2img,
neither is txt2img. A progress bar goes to stderr; an artist-level error prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sd_core.acceleration import ACCELERATION_MODES
from sd_core.errors import SDCoreError, ValidationError
from sd_core.request import TILINGS, ControlSpec, EngineSettings, GenerationRequest, LoraSpec
from sd_core.schedulers import SCHEDULERS

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sd_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate one or more images")
    gen.add_argument("--model", required=True, help="checkpoint file, diffusers folder, or hub id")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--out", required=True, type=Path, help="output PNG (batches add -2, -3, ...)")
    gen.add_argument("--image", type=Path, help="input image: img2img, or inpaint with --mask")
    gen.add_argument("--mask", type=Path, help="inpaint mask: white = regenerate")
    gen.add_argument("--mask-grow", type=int, default=0, help="grow the mask by N pixels")
    gen.add_argument("--mask-feather", type=int, default=0, help="soften the mask edge by N pixels")
    gen.add_argument("--controlnet", action="append", default=[], help="ControlNet model (repeatable)")
    gen.add_argument("--control-image", action="append", default=[], type=Path, help="one per --controlnet")
    gen.add_argument("--control-scale", action="append", default=[], type=float, help="one per --controlnet")
    gen.add_argument("--control-start", action="append", default=[], type=float)
    gen.add_argument("--control-end", action="append", default=[], type=float)
    gen.add_argument(
        "--lora",
        action="append",
        default=[],
        type=LoraSpec.from_argument,
        metavar="PATH[:SCALE]",
        help="LoRA (repeatable)",
    )
    gen.add_argument("--strength", type=float, default=0.75)
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--guidance", type=float, default=7.0)
    gen.add_argument("--seed", type=int, default=None, help="fixed seed (default: random)")
    gen.add_argument("--batch", type=int, default=1, help="number of variations (seed, seed+1, ...)")
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--scheduler", default="dpmpp_2m_karras", choices=sorted(SCHEDULERS))
    gen.add_argument("--tile", default="none", choices=TILINGS, help="seamless tiling axes")
    gen.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu")
    gen.add_argument("--dtype", default="auto", help="auto, float16, bfloat16 or float32")
    gen.add_argument(
        "--acceleration",
        default="auto",
        choices=ACCELERATION_MODES,
        help="GPU speed path (auto: CUDA graphs; compile: also torch.compile, slow first run)",
    )
    gen.add_argument("--cpu-offload", action="store_true", help="low VRAM: keep idle models in RAM")
    gen.add_argument("--vae-tiling", action="store_true", help="low VRAM: decode in tiles")
    gen.add_argument("--allow-network", action="store_true", help="allow downloading hub models")
    gen.add_argument("--allow-unsafe-pickle", action="store_true", help="load pickled .ckpt/.pt (runs code!)")
    return parser


def _controls(args: argparse.Namespace) -> tuple[ControlSpec, ...]:
    from sd_core.images import load_rgb

    count = len(args.controlnet)
    if len(args.control_image) != count:
        raise ValidationError("Give exactly one --control-image for each --controlnet.")
    for name in ("control_scale", "control_start", "control_end"):
        if len(getattr(args, name)) not in (0, count):
            flag = "--" + name.replace("_", "-")
            raise ValidationError(f"Give {flag} once per --controlnet, or not at all.")
    controls = []
    for index, model in enumerate(args.controlnet):
        controls.append(
            ControlSpec(
                model=model,
                image=load_rgb(args.control_image[index]),
                scale=args.control_scale[index] if args.control_scale else 1.0,
                start=args.control_start[index] if args.control_start else 0.0,
                end=args.control_end[index] if args.control_end else 1.0,
            )
        )
    return tuple(controls)


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    from sd_core.images import load_mask, load_rgb

    if args.mask is not None and args.image is None:
        raise ValidationError("--mask needs --image: inpainting repaints part of an existing image.")
    return GenerationRequest(
        model=args.model,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        image=load_rgb(args.image) if args.image else None,
        mask=load_mask(args.mask) if args.mask else None,
        controls=_controls(args),
        loras=tuple(args.lora),
        width=args.width,
        height=args.height,
        strength=args.strength,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        batch_size=args.batch,
        scheduler=args.scheduler,
        tiling=args.tile,
        mask_grow=args.mask_grow,
        mask_feather=args.mask_feather,
    )


def output_paths(out: Path, count: int) -> list[Path]:
    return [out if index == 0 else out.with_name(f"{out.stem}-{index + 1}{out.suffix}") for index in range(count)]


def generate(args: argparse.Namespace) -> list[Path]:
    from tqdm import tqdm

    from sd_core.engine import Engine
    from sd_core.metadata import save_png

    request = request_from_args(args)
    request.validate()
    settings = EngineSettings(
        device=args.device,
        dtype=args.dtype,
        cpu_offload=args.cpu_offload,
        vae_tiling=args.vae_tiling,
        acceleration=args.acceleration,
        allow_network=args.allow_network,
        allow_unsafe_pickle=args.allow_unsafe_pickle,
    )
    engine = Engine(settings)
    with tqdm(total=request.denoising_steps * request.batch_size, unit="step", file=sys.stderr) as bar:
        result = engine.generate(request, on_progress=lambda _progress: bar.update(1))
    paths = []
    for image, path in zip(result.images, output_paths(args.out, len(result.images)), strict=True):
        paths.append(save_png(image.pixels, path, image.metadata))
        print(f"{path} (seed {image.seed})")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            generate(args)
    except SDCoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
