"""sd_core against stock diffusers, same process, same weights, same inputs, on a CUDA GPU.

Real-size architectures (from the bundled configs) with random weights: compute cost depends on
shapes, not values, and no weights can be downloaded here. The weights are saved once as a diffusers
folder so sd_core loads them through its real loading path; stock diffusers loads the same folder.

    python benchmarks/gpu_benchmark.py --cases sd15_cn_img2img --out benchmarks/results/h100.json

Each case reports median latency over ``--repeats`` runs after warm-up, per-step time, the time from
load to first image, peak GPU memory, the sd_core/stock ratio, and the largest pixel difference
between the two outputs for the same seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sd_core.models.bundled import read_configs, write_config_folder


@dataclass(frozen=True)
class Case:
    name: str
    family: str  # sd1 | sdxl
    mode: str  # txt2img | img2img | inpaint
    size: int
    controlnet: bool
    steps: int = 20
    strength: float = 0.75


CASES = {
    case.name: case
    for case in (
        Case("sd15_cn_img2img", "sd1", "img2img", 512, True),
        Case("sd15_inpaint", "sd1", "inpaint", 512, False),
        Case("sd15_txt2img", "sd1", "txt2img", 512, False),
        Case("sdxl_cn_img2img", "sdxl", "img2img", 1024, True),
        Case("sdxl_inpaint", "sdxl", "inpaint", 1024, False),
        Case("sdxl_txt2img", "sdxl", "txt2img", 1024, False),
    )
}
PIPELINE_CONFIGS = {"sd1": "sd15", "sdxl": "sdxl_base"}
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


def build_random_models(family: str, root: Path, device: str = "cuda") -> tuple[Path, Path]:
    """Save a real-size random-weight pipeline and depth ControlNet (fp16) as diffusers folders."""
    import diffusers
    import transformers

    config_dir = write_config_folder(read_configs(PIPELINE_CONFIGS[family]), root / f"{family}-config")
    index = json.loads((config_dir / "model_index.json").read_text())
    components: dict[str, Any] = {}
    torch.manual_seed(0)
    with torch.device(device):
        for name, entry in index.items():
            if not isinstance(entry, list) or name in UNUSED_COMPONENTS:
                continue
            library, class_name = entry
            cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
            folder = config_dir / name
            if name.startswith("tokenizer") or name == "scheduler":
                components[name] = cls.from_pretrained(folder)
            elif library == "transformers":
                config = transformers.AutoConfig.from_pretrained(folder)
                components[name] = cls(config).half()
            else:
                components[name] = cls.from_config(cls.load_config(folder)).half()
        components.update({name: None for name in UNUSED_COMPONENTS if name in index})
        pipeline_cls = getattr(diffusers, index["_class_name"])
        pipeline = pipeline_cls(**components)
        controlnet = diffusers.ControlNetModel.from_unet(pipeline.unet).half()
    model_dir, controlnet_dir = root / f"{family}-model", root / f"{family}-controlnet"
    pipeline.save_pretrained(model_dir)
    controlnet.save_pretrained(controlnet_dir)
    del pipeline, controlnet, components
    if device == "cuda":
        torch.cuda.empty_cache()
    return model_dir, controlnet_dir


def inputs(case: Case) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.random((case.size, case.size, 3), dtype=np.float32)
    mask = np.zeros((case.size, case.size), np.float32)
    mask[case.size // 4 : 3 * case.size // 4, case.size // 4 : 3 * case.size // 4] = 1.0
    yy, xx = np.mgrid[0 : case.size, 0 : case.size] / case.size
    depth = np.repeat(((xx + yy) / 2)[..., None], 3, axis=2).astype(np.float32)
    return {"image": image, "mask": mask, "depth": depth}


def timed(fn, repeats: int) -> tuple[list[float], Any]:
    times, output = [], None
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        output = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times, output


def stock_runner(case: Case, model_dir: Path, controlnet_dir: Path, data: dict[str, np.ndarray], seed: int):
    """Stock diffusers, the way its docs show: from_pretrained, fp16, .to('cuda'), call."""
    import diffusers
    from PIL import Image

    prefix = "StableDiffusionXL" if case.family == "sdxl" else "StableDiffusion"
    middle = "ControlNet" if case.controlnet else ""
    suffix = {"txt2img": "", "img2img": "Img2Img", "inpaint": "Inpaint"}[case.mode]
    cls = getattr(diffusers, f"{prefix}{middle}{suffix}Pipeline")
    extra: dict[str, Any] = {}
    if case.controlnet:
        extra["controlnet"] = diffusers.ControlNetModel.from_pretrained(controlnet_dir, torch_dtype=torch.float16)
    if case.family == "sd1":
        extra["safety_checker"] = None
    pipe = cls.from_pretrained(model_dir, torch_dtype=torch.float16, **extra).to("cuda")
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    to_pil = lambda a: Image.fromarray((a * 255 + 0.5).astype(np.uint8))  # noqa: E731
    kwargs: dict[str, Any] = {"height": case.size, "width": case.size}
    if case.mode != "txt2img":
        kwargs.update(image=to_pil(data["image"]), strength=case.strength)
    if case.mode == "inpaint":
        kwargs["mask_image"] = to_pil(data["mask"])
    if case.controlnet:
        kwargs["control_image" if case.mode != "txt2img" else "image"] = to_pil(data["depth"])

    def run():
        generator = torch.Generator("cpu").manual_seed(seed)
        out = pipe(
            "a stone wall",
            num_inference_steps=case.steps,
            guidance_scale=7.0,
            generator=generator,
            output_type="np",
            **kwargs,
        )
        return out.images[0]

    return pipe, run


def sd_core_runner(case: Case, model_dir: Path, controlnet_dir: Path, data: dict[str, np.ndarray], seed: int):
    from sd_core.engine import Engine
    from sd_core.request import ControlSpec, EngineSettings, GenerationRequest

    engine = Engine(EngineSettings(device="cuda"))
    to8 = lambda a: np.round(a * 255) / 255  # same 8-bit inputs as stock's PIL images  # noqa: E731
    request = GenerationRequest(
        model=str(model_dir),
        prompt="a stone wall",
        image=to8(data["image"]).astype(np.float32) if case.mode != "txt2img" else None,
        mask=data["mask"] if case.mode == "inpaint" else None,
        controls=(ControlSpec(str(controlnet_dir), to8(data["depth"]).astype(np.float32)),) if case.controlnet else (),
        width=case.size,
        height=case.size,
        strength=case.strength,
        steps=case.steps,
        guidance=7.0,
        seed=seed,
        scheduler="euler",
    )

    def run():
        return engine.generate(request, on_progress=lambda _p: None).images[0].pixels

    return engine, run


def measure(name: str, factory, case: Case, model_dir, controlnet_dir, data, repeats: int) -> dict[str, Any]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    holder, run = factory(case, model_dir, controlnet_dir, data, seed=1234)
    first_times, _ = timed(run, 1)
    first_image_s = time.perf_counter() - start
    timed(run, 1)  # second warm-up
    times, output = timed(run, repeats)
    unet_steps = case.steps if case.mode == "txt2img" else int(case.steps * case.strength)
    latency = statistics.median(times)
    result = {
        "latency_s": latency,
        "per_step_ms": latency / unet_steps * 1000,
        "unet_steps": unet_steps,
        "load_to_first_image_s": first_image_s,
        "first_call_s": first_times[0],
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
        "all_runs_s": times,
    }
    del holder, run
    torch.cuda.empty_cache()
    print(f"  {name:8s} {latency * 1000:8.1f} ms  {result['per_step_ms']:6.2f} ms/step", flush=True)
    return {"metrics": result, "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import diffusers
    import transformers

    report: dict[str, Any] = {
        "card": torch.cuda.get_device_name(0),
        "software": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "cases": {},
    }
    built: dict[str, tuple[Path, Path]] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for name in args.cases:
            case = CASES[name]
            if case.family not in built:
                start = time.perf_counter()
                built[case.family] = build_random_models(case.family, Path(tmp))
                print(f"built {case.family} random weights in {time.perf_counter() - start:.1f} s", flush=True)
            model_dir, controlnet_dir = built[case.family]
            data = inputs(case)
            print(f"{name}:", flush=True)
            stock = measure("stock", stock_runner, case, model_dir, controlnet_dir, data, args.repeats)
            ours = measure("sd_core", sd_core_runner, case, model_dir, controlnet_dir, data, args.repeats)
            difference = float(np.nanmax(np.abs(stock["output"].astype(np.float32) - ours["output"])))
            report["cases"][name] = {
                "case": case.__dict__,
                "stock": stock["metrics"],
                "sd_core": ours["metrics"],
                "speedup_vs_stock": stock["metrics"]["latency_s"] / ours["metrics"]["latency_s"],
                "max_abs_pixel_difference": difference,
                "outputs_finite": bool(np.isfinite(stock["output"]).all() and np.isfinite(ours["output"]).all()),
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2))
    print(f"\n{'case':18s} {'stock ms':>9s} {'sd_core ms':>10s} {'ms/step':>15s} {'speedup':>8s} {'max diff':>9s}")
    for name, entry in report["cases"].items():
        s, o = entry["stock"], entry["sd_core"]
        steps = f"{s['per_step_ms']:.1f}/{o['per_step_ms']:.1f}"
        print(
            f"{name:18s} {s['latency_s'] * 1000:9.1f} {o['latency_s'] * 1000:10.1f} {steps:>15s} "
            f"{entry['speedup_vs_stock']:8.2f} {entry['max_abs_pixel_difference']:9.4f}"
        )
    print(f"card: {report['card']}; {report['software']}")


if __name__ == "__main__":
    main()
