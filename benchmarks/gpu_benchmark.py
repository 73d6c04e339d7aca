"""sd_core against stock diffusers, same process, same weights, same inputs, on a CUDA GPU.

Real-size architectures (from the bundled configs) with random weights: compute cost depends on
shapes, not values, and no weights can be downloaded here. The weights are saved once as a diffusers
folder so sd_core loads them through its real loading path; stock diffusers loads the same folder.

    python benchmarks/gpu_benchmark.py --out benchmarks/results/h100.json

Each case runs stock diffusers (eager, fp16, SDPA), sd_core with acceleration off (the noise floor of
the output comparison: same computation, different code path) and sd_core with CUDA graphs. Each
reports median latency over ``--repeats`` runs after warm-up; per-step time two ways (latency over
steps, and the marginal cost of a step from a second run with twice the steps); per-request overhead
outside the steps (latency minus steps times the marginal step); time from load to first image
(graph capture included); peak GPU memory allocated and reserved; and the largest pixel difference
to stock for the same seed. The low-VRAM section runs CPU offload under a per-process memory cap.

``--interleave N`` adds N rounds with stock and sd_core loaded together, one request each in turn: the ratio
that holds when the shared host's load drifts (it moves stock's step by 20% between runs).

``--variants ... compile compile_warm`` adds acceleration "compile" (torch.compile + CUDA graphs): "compile"
in this process with an empty inductor cache (cold: the compile is in the first-image time), then
"compile_warm" in a second process on the same cache folder, the way a Blender restart meets it. The warm
process also reports the time from its own start (interpreter, imports) to its first image:

    python benchmarks/gpu_benchmark.py --cases sd15_cn_img2img --variants stock auto compile compile_warm \
        --ablate --low-vram --no-profile --repeats 3 --out benchmarks/results/h100-compile.json
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
# --variants name -> report key and sd_core settings (stock is stock diffusers; compile_warm a second process)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "stock": ("stock", {}),
    "off": ("sd_core_off", {"acceleration": "off"}),
    "auto": ("sd_core", {}),
    "compile": ("sd_core_compile", {"acceleration": "compile"}),
    "compile_warm": ("sd_core_compile_warm", {}),
}


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


GIB = 2**30
SEED = 1234
# Low-VRAM budgets from the issue: what a 4 GiB card holds for SD1.5 + ControlNet, an 8 GiB card for SDXL.
LOW_VRAM_CAP_GIB = {"sd1": 4.0, "sdxl": 8.0}
# The ablations of the graph path: graphs without its layout changes (fused QKV, channels-last, and with them the
# Triton kernels), everything but the Triton kernels (PyTorch's group_norm and GEGLU on channels-last tensors), and
# everything but the ControlNet's work alongside the UNet's in one graph (each network's graph in turn).
ABLATIONS = {
    "sd_core_graphs_only": {"fuse_qkv": False, "channels_last": False},
    "sd_core_no_triton_kernels": {"triton_kernels": False},
    "sd_core_controlnet_in_turn": {"controlnet_alongside": False},
}


def unet_steps(case: Case, steps: int) -> int:
    return steps if case.mode == "txt2img" else int(steps * case.strength)


def timed(run, repeats: int, steps: int) -> tuple[list[float], Any]:
    times, output = [], None
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        output = run(steps)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times, output


def to_pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray((array * 255 + 0.5).astype(np.uint8))


def stock_runner(case: Case, model_dir: Path, controlnet_dir: Path, data: dict[str, np.ndarray]):
    """Stock diffusers, the way its docs show: from_pretrained, fp16, .to('cuda'), call."""
    import diffusers

    from sd_core.engine import pipeline_class_name

    cls = getattr(diffusers, pipeline_class_name(case.family, case.mode, case.controlnet))
    extra: dict[str, Any] = {}
    if case.controlnet:
        extra["controlnet"] = diffusers.ControlNetModel.from_pretrained(controlnet_dir, torch_dtype=torch.float16)
    if case.family == "sd1":
        extra["safety_checker"] = None
    pipe = cls.from_pretrained(model_dir, torch_dtype=torch.float16, **extra).to("cuda")
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kwargs: dict[str, Any] = {"height": case.size, "width": case.size}
    if case.mode != "txt2img":
        kwargs.update(image=to_pil(data["image"]), strength=case.strength)
    if case.mode == "inpaint":
        kwargs["mask_image"] = to_pil(data["mask"])
    if case.controlnet:
        kwargs["control_image" if case.mode != "txt2img" else "image"] = to_pil(data["depth"])

    def run(steps: int):
        generator = torch.Generator("cpu").manual_seed(SEED)
        with diffusers_own_noise():
            out = pipe(
                "a stone wall",
                num_inference_steps=steps,
                guidance_scale=7.0,
                generator=generator,
                output_type="np",
                **kwargs,
            )
        return out.images[0]

    return pipe, run


@contextmanager
def diffusers_own_noise() -> Iterator[None]:
    """Stock diffusers as shipped: undo sd_core's noise uploads (sd_core/noise.py) in the modules they reached,
    for as long as stock runs in this process."""
    from diffusers.utils import torch_utils

    from sd_core import noise

    modules = [
        module for module in list(sys.modules.values()) if getattr(module, "randn_tensor", None) is noise.randn_tensor
    ]
    for module in modules:
        module.randn_tensor = torch_utils.randn_tensor
    try:
        yield
    finally:
        for module in modules:
            module.randn_tensor = noise.randn_tensor


def sd_core_runner(case: Case, model_dir: Path, controlnet_dir: Path, data: dict[str, np.ndarray], **settings):
    """sd_core through its public API, with a progress callback (so step previews are part of the cost)."""
    from sd_core.engine import Engine
    from sd_core.request import ControlSpec, EngineSettings, GenerationRequest

    accelerator_options = settings.pop("accelerator", None)
    engine = Engine(EngineSettings(device="cuda", **settings))
    if accelerator_options is not None:  # a variant of the graph path other than the default
        from sd_core.acceleration import CudaGraphAccelerator

        engine.accelerator = CudaGraphAccelerator(**accelerator_options)
    to8 = lambda a: (np.round(a * 255) / 255).astype(np.float32)  # same 8-bit inputs as stock's PIL  # noqa: E731
    base = dict(
        model=str(model_dir),
        prompt="a stone wall",
        image=to8(data["image"]) if case.mode != "txt2img" else None,
        mask=data["mask"] if case.mode == "inpaint" else None,
        controls=(ControlSpec(str(controlnet_dir), to8(data["depth"])),) if case.controlnet else (),
        width=case.size,
        height=case.size,
        strength=case.strength,
        guidance=7.0,
        seed=SEED,
        scheduler="euler",
    )

    def run(steps: int):
        request = GenerationRequest(steps=steps, **base)
        return engine.generate(request, on_progress=lambda _p: None).images[0].pixels

    return engine, run


def release(holder: Any) -> None:
    """Unload a runner's models; the caller then drops its references and calls ``free_gpu``."""
    if hasattr(holder, "unload"):
        holder.unload()


def free_gpu() -> None:
    """Give cached GPU memory back so the next variant starts from the same empty card."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def measure(name: str, factory, case: Case, repeats: int, **options) -> dict[str, Any]:
    """Load, first image, warm runs at two step counts; the runner's own measurements (see the module doc)."""
    free_gpu()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    holder, run = factory(case, **options)
    first_times, _ = timed(run, 1, case.steps)
    first_image_s = time.perf_counter() - start
    first_image_at = time.time()
    timed(run, 1, case.steps)  # second warm-up
    peak_while_preparing = torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()  # from here: the steady state, graphs captured and warm-ups freed
    times, output = timed(run, repeats, case.steps)
    long_times, _ = timed(run, repeats, 2 * case.steps)  # another step count reuses the same graphs
    latency, long_latency = statistics.median(times), statistics.median(long_times)
    steps, long_steps = unet_steps(case, case.steps), unet_steps(case, 2 * case.steps)
    marginal_step = (long_latency - latency) / (long_steps - steps)
    result = {
        "latency_s": latency,
        "per_step_ms": latency / steps * 1000,
        "marginal_step_ms": marginal_step * 1000,
        "overhead_outside_steps_ms": (latency - steps * marginal_step) * 1000,
        "unet_steps": steps,
        "load_to_first_image_s": first_image_s,
        "first_call_s": first_times[0],
        "first_image_at_epoch_s": first_image_at,
        "peak_gpu_allocated_gib": max(peak_while_preparing[1], torch.cuda.max_memory_allocated()) / GIB,
        "peak_gpu_reserved_gib": max(peak_while_preparing[0], torch.cuda.max_memory_reserved()) / GIB,
        "steady_peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
        "all_runs_s": times,
        "long_runs_s": long_times,
    }
    accelerator = getattr(holder, "accelerator", None)
    if accelerator is not None:
        flags = {key: value for key, value in vars(accelerator).items() if isinstance(value, bool)}
        result["accelerator"] = {"class": type(accelerator).__name__, **flags}
        result["cuda_graphs_captured"] = getattr(accelerator, "graph_count", 0)
    release(holder)
    del holder, run
    free_gpu()
    print(
        f"  {name:16s} {latency * 1000:8.1f} ms  {result['per_step_ms']:6.2f} ms/step  "
        f"marginal {result['marginal_step_ms']:6.2f}  overhead {result['overhead_outside_steps_ms']:6.1f} ms  "
        f"first {first_image_s:5.1f} s  reserved {result['peak_gpu_reserved_gib']:.2f} GiB",
        flush=True,
    )
    return {"metrics": result, "output": output}


def interleaved(case: Case, rounds: int, **paths) -> dict[str, Any]:
    """Stock and sd_core loaded side by side, one request each in turn: both meet the same load on a shared host,
    which drifts between the separate blocks ``measure`` times (stock's step varied 41-56 ms across runs)."""
    free_gpu()
    runners = {"stock": stock_runner(case, **paths), "sd_core": sd_core_runner(case, **paths)}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _holder, run in runners.values():
        timed(run, 2, case.steps)  # warm-up: graphs captured, kernels built
    for _ in range(rounds):
        for name, (_holder, run) in runners.items():
            times[name] += timed(run, 1, case.steps)[0]
    for name in list(runners):
        release(runners.pop(name)[0])
    free_gpu()
    steps = unet_steps(case, case.steps)
    result: dict[str, Any] = {name: {"latency_s": statistics.median(t), "all_runs_s": t} for name, t in times.items()}
    for name in times:
        result[name]["per_step_ms"] = result[name]["latency_s"] / steps * 1000
    result["speedup_vs_stock"] = result["stock"]["latency_s"] / result["sd_core"]["latency_s"]
    ratios = sorted(stock / ours for stock, ours in zip(times["stock"], times["sd_core"], strict=True))
    result["round_speedups_min_median_max"] = [ratios[0], statistics.median(ratios), ratios[-1]]
    print(
        f"  interleaved x{rounds}: stock {result['stock']['per_step_ms']:.2f} ms/step, sd_core "
        f"{result['sd_core']['per_step_ms']:.2f} ms/step, {result['speedup_vs_stock']:.2f}x",
        flush=True,
    )
    return result


def low_vram(case: Case, variant: str, factory, repeats: int, **options) -> dict[str, Any]:
    """One run under the family's memory cap (``set_per_process_memory_fraction``): fits or not, and how fast."""
    cap = LOW_VRAM_CAP_GIB[case.family]
    total = torch.cuda.get_device_properties(0).total_memory
    free_gpu()
    torch.cuda.set_per_process_memory_fraction(cap * GIB / total)
    entry: dict[str, Any] = {"cap_gib": cap, "variant": variant}
    holder = run = None
    try:
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        holder, run = factory(case, **options)
        timed(run, 1, case.steps)
        entry["load_to_first_image_s"] = time.perf_counter() - start
        times, output = timed(run, repeats, case.steps)
        entry.update(
            fits=True,
            latency_s=statistics.median(times),
            per_step_ms=statistics.median(times) / unet_steps(case, case.steps) * 1000,
            peak_gpu_allocated_gib=torch.cuda.max_memory_allocated() / GIB,
            peak_gpu_reserved_gib=torch.cuda.max_memory_reserved() / GIB,
            outputs_finite=bool(np.isfinite(output).all()),
        )
    except Exception as error:  # an OOM under the cap is a result, as is any other failure of the mode
        entry.update(fits=False, error=f"{type(error).__name__}: {str(error)[:300]}")
    finally:
        release(holder)
        del holder, run
        free_gpu()
        torch.cuda.set_per_process_memory_fraction(1.0)
    print(f"  low-VRAM {variant:12s} cap {cap} GiB: {entry}", flush=True)
    return entry


def preview_gpu_ms(family: str) -> dict[str, float]:
    """GPU time of one step preview, and host time of one non-blocking hand-over, at 512² and 1024² latents."""
    from sd_core.preview import PreviewRelay

    result = {}
    for side in (64, 128):
        latents = torch.randn(2, 4, side, side, device="cuda", dtype=torch.float16)
        relay = PreviewRelay(family, deferred=True)
        for _ in range(3):
            relay.handover(latents)
        torch.cuda.synchronize()
        start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        host_start = time.perf_counter()
        start_event.record()
        for _ in range(100):
            relay.handover(latents)
        end_event.record()
        host_ms = (time.perf_counter() - host_start) * 10
        torch.cuda.synchronize()
        result[f"{side * 8}px_gpu_ms"] = start_event.elapsed_time(end_event) / 100
        result[f"{side * 8}px_host_ms"] = host_ms
    return result


def profile_request(case: Case, out: Path, **paths) -> None:
    """Where one warm accelerated request spends host and GPU time: the per-request overhead, itemised.

    Besides the operator tables, a timeline summary: when the GPU works and when it waits for the host
    (idle gaps, with their offset from the request's start), from the profiler's trace.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    holder, run = sd_core_runner(case, **paths)
    timed(run, 2, case.steps)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler, record_function("request"):
        timed(run, 1, case.steps)
    table = profiler.key_averages()
    out.write_text(
        timeline_summary(profiler)
        + "\n"
        + table.table(sort_by="cpu_time_total", row_limit=40)
        + "\n"
        + table.table(sort_by="cuda_time_total", row_limit=40)
    )
    release(holder)
    del holder, run
    free_gpu()


def timeline_summary(profiler: Any, gap_us: float = 100.0) -> str:
    """The request's wall time, the GPU's busy time within it, and every GPU idle gap longer than ``gap_us``."""
    with tempfile.TemporaryDirectory() as folder:
        trace_file = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(trace_file))
        events = json.loads(trace_file.read_text())["traceEvents"]
    request = next(event for event in events if (event.get("name"), event.get("cat")) == ("request", "user_annotation"))
    start, end = request["ts"], request["ts"] + request["dur"]
    busy = sorted(
        (event["ts"], event["ts"] + event["dur"])
        for event in events
        if event.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and start <= event["ts"] <= end
    )
    merged: list[list[float]] = []
    for begin, finish in busy:
        if merged and begin <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], finish)
        else:
            merged.append([begin, finish])
    busy_us = sum(finish - begin for begin, finish in merged)
    edges = [start, *(time for interval in merged for time in interval), end]
    gaps = [(edges[i], edges[i + 1]) for i in range(0, len(edges) - 1, 2) if edges[i + 1] - edges[i] > gap_us]
    lines = [
        f"request {(end - start) / 1000:.2f} ms wall, GPU busy {busy_us / 1000:.2f} ms, "
        f"idle {(end - start - busy_us) / 1000:.2f} ms; idle gaps over {gap_us:.0f} us (offset from start: length):"
    ]
    lines += [f"  at {(begin - start) / 1000:8.2f} ms: {(finish - begin) / 1000:6.2f} ms" for begin, finish in gaps]
    return "\n".join(lines) + "\n"


def difference(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.nanmax(np.abs(a.astype(np.float32) - b.astype(np.float32))[where]))


def compared_pixels(case: Case, data: dict[str, np.ndarray]) -> np.ndarray:
    """Inpainting: sd_core pastes the exact input pixels back outside the mask, stock does not."""
    return data["mask"] > 0.5 if case.mode == "inpaint" else np.ones(data["mask"].shape, bool)


def folder_size(folder: Path) -> dict[str, int]:
    files = [path for path in folder.rglob("*") if path.is_file()]
    return {"files": len(files), "bytes": sum(path.stat().st_size for path in files)}


def compile_warm_in_new_process(
    case: Case, paths: dict[str, Any], cache: Path, reference: np.ndarray, repeats: int, out: Path, profiled: bool
) -> dict[str, Any]:
    """Run "compile" again in a fresh interpreter on the same cache folder: what a restarted Blender pays."""
    reference_file = out.with_suffix(".reference.npy")
    np.save(reference_file, reference)
    worker_out = out.with_suffix(".warm.json")
    command = [sys.executable, __file__, "--cases", case.name, "--repeats", str(repeats), "--out", str(worker_out)]
    command += ["--worker-models", str(paths["model_dir"]), str(paths["controlnet_dir"])]
    command += ["--compile-cache", str(cache), "--reference", str(reference_file), "--launched-at", str(time.time())]
    command += ["--profile-warm-start"] if profiled else []
    completed = subprocess.run(command, timeout=480, check=False)
    if completed.returncode != 0 or not worker_out.exists():
        return {"error": f"warm process exited with {completed.returncode}"}
    return json.loads(worker_out.read_text())


def worker(args: argparse.Namespace) -> None:
    """The second process of ``compile_warm``: one "compile" measurement on an existing cache, as JSON."""
    started_at = args.launched_at
    case = CASES[args.cases[0]]
    data = inputs(case)
    model_dir, controlnet_dir = (Path(folder) for folder in args.worker_models)
    paths = {"model_dir": model_dir, "controlnet_dir": controlnet_dir, "data": data}
    cache_before = folder_size(args.compile_cache)
    profiler = cProfile.Profile()
    if args.profile_warm_start:  # where the first image's seconds go; cProfile slows pure Python, so read shares
        profiler.enable()
    measured = measure(
        "compile warm", sd_core_runner, case, args.repeats, acceleration="compile",
        compile_cache_dir=str(args.compile_cache), **paths,
    )  # fmt: skip
    if args.profile_warm_start:
        profiler.disable()
        listing = io.StringIO()
        pstats.Stats(profiler, stream=listing).sort_stats("cumulative").print_stats(60)
        args.out.with_suffix(".pstats.txt").write_text(listing.getvalue())
    metrics = measured["metrics"]
    metrics["dynamo_compile_times"] = torch._dynamo.utils.compile_times(repr="str", aggregate=True)
    metrics["process_start_to_first_image_s"] = metrics["first_image_at_epoch_s"] - started_at
    metrics["max_abs_pixel_difference_to_stock"] = difference(
        np.load(args.reference), measured["output"], compared_pixels(case, data)
    )
    metrics["compile_cache_before"] = cache_before
    metrics["compile_cache_after"] = folder_size(args.compile_cache)
    args.out.write_text(json.dumps(metrics, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ablate", nargs="*", default=["sd15_cn_img2img"], help="cases that also run the ablations")
    parser.add_argument("--low-vram", nargs="*", default=["sd1", "sdxl"], help="families to run under a memory cap")
    parser.add_argument(
        "--variants", nargs="+", default=["stock", "off", "auto"], choices=list(VARIANTS), help="stock is required"
    )
    parser.add_argument("--compile-cache", type=Path, help='inductor cache for "compile" (default: a new, empty one)')
    parser.add_argument("--no-profile", action="store_true", help="skip the profile of one accelerated request")
    parser.add_argument(
        "--interleave", type=int, default=0, help="also this many alternating stock / sd_core runs, both loaded"
    )
    parser.add_argument(
        "--profile-warm-start", action="store_true", help="cProfile the compile_warm process (slows its first image)"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--worker-models", nargs=2, help=argparse.SUPPRESS)  # the compile_warm process
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--launched-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_models:
        worker(args)
        return
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
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "cases": {},
        "low_vram": {},
        "preview": {},
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))

    built: dict[str, tuple[Path, Path]] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for name in args.cases:
            case = CASES[name]
            if case.family not in built:
                start = time.perf_counter()
                built[case.family] = build_random_models(case.family, Path(tmp))
                print(f"built {case.family} random weights in {time.perf_counter() - start:.1f} s", flush=True)
                report["preview"][case.family] = preview_gpu_ms(case.family)
            model_dir, controlnet_dir = built[case.family]
            data = inputs(case)
            paths = {"model_dir": model_dir, "controlnet_dir": controlnet_dir, "data": data}
            print(f"{name}:", flush=True)
            runs = {"stock": measure("stock", stock_runner, case, args.repeats, **paths)}
            for variant in args.variants:
                key, settings = VARIANTS[variant]
                if variant in ("stock", "compile_warm"):
                    continue
                if variant == "compile":
                    cache = args.compile_cache or Path(tmp) / "inductor-cache"
                    settings = {**settings, "compile_cache_dir": str(cache)}
                    cache_before = folder_size(cache) if cache.exists() else {"files": 0, "bytes": 0}
                runs[key] = measure(f"sd_core {variant}", sd_core_runner, case, args.repeats, **settings, **paths)
                if variant == "compile":
                    runs[key]["metrics"]["compile_cache_before"] = cache_before
                    runs[key]["metrics"]["compile_cache_after"] = folder_size(cache)
            if name in args.ablate:
                for key, options in ABLATIONS.items():
                    label = key.removeprefix("sd_core_").replace("_", " ")
                    runs[key] = measure(label, sd_core_runner, case, args.repeats, accelerator=options, **paths)
            stock = runs["stock"]
            inpainting = case.mode == "inpaint"
            compared = compared_pixels(case, data)
            entry: dict[str, Any] = {"case": case.__dict__, "compared_pixels": "inside mask" if inpainting else "all"}
            for variant, measured in runs.items():
                entry[variant] = measured["metrics"]
                if variant != "stock":
                    speedup = stock["metrics"]["latency_s"] / measured["metrics"]["latency_s"]
                    entry[variant]["speedup_vs_stock"] = speedup
                    entry[variant]["max_abs_pixel_difference_to_stock"] = difference(
                        stock["output"], measured["output"], compared
                    )
            if "sd_core" in runs and "sd_core_off" in runs:
                entry["max_abs_pixel_difference_graphs_vs_off"] = difference(
                    runs["sd_core"]["output"], runs["sd_core_off"]["output"], compared
                )
            entry["outputs_finite"] = all(bool(np.isfinite(m["output"]).all()) for m in runs.values())
            if args.interleave:
                entry["interleaved"] = interleaved(case, args.interleave, **paths)
            report["cases"][name] = entry
            save()
            if "compile_warm" in args.variants and "sd_core_compile" in runs:
                cache = args.compile_cache or Path(tmp) / "inductor-cache"
                warm = compile_warm_in_new_process(
                    case, paths, cache, stock["output"], args.repeats, args.out, args.profile_warm_start
                )
                if "latency_s" in warm:
                    warm["speedup_vs_stock"] = stock["metrics"]["latency_s"] / warm["latency_s"]
                entry["sd_core_compile_warm"] = warm
                save()
            if name == "sd15_cn_img2img" and not args.no_profile:
                profile_request(case, args.out.with_suffix(".profile.txt"), **paths)
        for family in args.low_vram:
            case = next(c for c in CASES.values() if c.family == family and c.controlnet)
            if family not in built:
                continue
            model_dir, controlnet_dir = built[family]
            paths = {"model_dir": model_dir, "controlnet_dir": controlnet_dir, "data": inputs(case)}
            report["low_vram"][case.name] = low_vram(
                case, "sd_core cpu_offload", sd_core_runner, 2, cpu_offload=True, **paths
            )
            save()
    print_table(report)


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{'case':18s} {'variant':14s} {'ms':>8s} {'ms/step':>8s} {'marg.':>6s} {'ovh ms':>7s} {'first s':>7s} "
        f"{'res GiB':>7s} {'speedup':>7s} {'diff':>6s}"
    )
    for name, entry in report["cases"].items():
        for variant in (*(key for key, _ in VARIANTS.values()), *ABLATIONS):
            if "latency_s" not in entry.get(variant, {}):
                continue
            m = entry[variant]
            print(
                f"{name:18s} {variant:14s} {m['latency_s'] * 1000:8.1f} {m['per_step_ms']:8.2f} "
                f"{m['marginal_step_ms']:6.2f} {m['overhead_outside_steps_ms']:7.1f} {m['load_to_first_image_s']:7.1f} "
                f"{m['peak_gpu_reserved_gib']:7.2f} {m.get('speedup_vs_stock', 1.0):7.2f} "
                f"{m.get('max_abs_pixel_difference_to_stock', 0.0):6.3f}"
            )
    print(f"card: {report['card']}; {report['software']}")


if __name__ == "__main__":
    main()
