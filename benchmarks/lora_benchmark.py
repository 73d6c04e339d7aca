"""What a LoRA costs on a CUDA GPU: merging it into a loaded real-size model, switching it, taking it out.

Real-size random-weight SD1.5 or SDXL (``gpu_benchmark.build_random_models``) and a random kohya-layout LoRA of
rank 32 on the layers kohya's scripts train by default: every attention projection, feed-forward and
projection in/out of the UNet, and the text encoders' attention and MLP layers. sd_core with its default
acceleration (CUDA graphs) times a whole request with nothing to merge, and the merge alone in each of its
cases: the first LoRA in (the originals of its layers copied to host memory first), then repeatedly another
scale (merged onto the kept originals), out (the originals copied back) and in again, with the most GPU memory
a merge takes beyond the model's. It checks that the accelerated pixels with the LoRA
match sd_core's with acceleration off on the same weights, and that taking the LoRA out gives back the first
image bit for bit. ``--cpu-offload`` does the same with the low-VRAM mode's weights resting in host memory
(whole networks moved for SD1.5, layer by layer for SDXL), where the LoRA is merged into the resting weights;
first a request fails in the middle of the UNet (layers left on the GPU), so that the match with acceleration
off shows the LoRA reached the layers that failure left behind too.

    python benchmarks/lora_benchmark.py --family sdxl [--cpu-offload] --out benchmarks/results/lora-sdxl.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_benchmark import build_random_models

from sd_core import EngineSettings, GenerationRequest, LoraSpec
from sd_core.engine import Engine
from sd_core.testing.loras import KOHYA_PREFIXES, random_updates, write_kohya_lora

RANK = 32
TRAINED = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TRAINED += ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
SIZES = {"sd1": 512, "sdxl": 1024}


def write_lora(engine: Engine, model: str, out: Path) -> tuple[Path, int]:
    """A random kohya LoRA on the trained layers of ``model``'s networks; returns its path and layer count."""
    base = engine.cache.base_pipeline(model)[0]
    shapes = {}
    for network in KOHYA_PREFIXES:
        module = getattr(base, network, None)
        for path, layer in module.named_modules() if module is not None else ():
            if not isinstance(layer, torch.nn.Linear | torch.nn.Conv2d) or not path.endswith(TRAINED):
                continue
            if network != "unet" and not path.startswith("text_model."):
                path = f"text_model.{path}"  # as LoRA files name CLIP's layers
            shapes[network, path] = layer.weight.shape
    updates = {
        layer: tuple(part.half() / 100 for part in parts) for layer, parts in random_updates(shapes, RANK).items()
    }
    return write_kohya_lora(out, updates, alpha=float(RANK)), len(updates)


def request(model: str, family: str, *loras: LoraSpec) -> GenerationRequest:
    size = SIZES[family]
    return GenerationRequest(model=model, prompt="moss", steps=20, seed=1, width=size, height=size, loras=loras)


def merge_ms(engine: Engine, model: str, family: str, *loras: LoraSpec) -> tuple[float, int]:
    """The time of one merge, and the most GPU memory it allocated beyond what was allocated before it."""
    base = engine.cache.base_pipeline(model)[0]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    engine._merge_loras(request(model, family, *loras), base)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000, torch.cuda.max_memory_allocated() - before


def request_ms(engine: Engine, model: str, family: str, *loras: LoraSpec) -> tuple[float, np.ndarray]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    pixels = engine.generate(request(model, family, *loras)).images[0].pixels
    return (time.perf_counter() - start) * 1000, pixels


def fail_midway(engine: Engine, model: str, family: str) -> bool:
    """Run a request that fails as the UNet reaches a key projection of its mid block (which layer-by-layer
    offloading has then already loaded ahead onto the GPU); returns whether it failed."""
    layer = engine.cache.base_pipeline(model)[0].unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_k

    def fail(*_args: Any) -> None:
        raise RuntimeError("failed midway, on purpose")

    handle = layer.register_forward_pre_hook(fail)
    try:
        request_ms(engine, model, family)
    except RuntimeError:
        return True
    finally:
        handle.remove()
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=list(SIZES), default="sd1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-offload", action="store_true", help="the low-VRAM mode's weights in host memory")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report: dict[str, Any] = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "unit": "ms"}
    with tempfile.TemporaryDirectory() as folder:
        model = str(build_random_models(args.family, Path(folder))[0])
        engine = Engine(EngineSettings(device="cuda", cpu_offload=args.cpu_offload))
        path, layers = write_lora(engine, model, Path(folder) / "style.safetensors")
        report |= {"family": args.family, "cpu offload": args.cpu_offload, "lora layers": layers, "rank": RANK}
        report["lora MB"] = path.stat().st_size / 1e6
        full, half = LoraSpec(str(path), 1.0), LoraSpec(str(path), 0.5)
        request_ms(engine, model, args.family)  # load, prepare and capture
        plain = [request_ms(engine, model, args.family) for _ in range(args.repeats)]
        report["request without a LoRA"] = float(np.median([ms for ms, _ in plain]))
        if args.cpu_offload:
            report["a request failed midway"] = fail_midway(engine, model, args.family)
        merges: dict[str, list[tuple[float, int]]] = {"first in": [merge_ms(engine, model, args.family, full)]}
        merges |= {"another scale": [], "out": [], "in again": []}
        for _ in range(args.repeats):
            merges["another scale"].append(merge_ms(engine, model, args.family, half))
            merges["out"].append(merge_ms(engine, model, args.family))
            merges["in again"].append(merge_ms(engine, model, args.family, full))
        report |= {f"merge {name}": float(np.median([ms for ms, _ in runs])) for name, runs in merges.items()}
        extra = max(peak for runs in merges.values() for _, peak in runs)
        report["merge: most GPU memory beyond the model's, MiB"] = extra / 2**20
        with_lora = [request_ms(engine, model, args.family, half) for _ in range(args.repeats)]
        report["request with the LoRA merged"] = float(np.median([ms for ms, _ in with_lora]))
        _, back = request_ms(engine, model, args.family)
        report["without the LoRA again: same bits"] = bool(np.array_equal(back, plain[0][1]))
        report["max difference the LoRA makes"] = float(np.abs(with_lora[0][1] - plain[0][1]).max())
        reference = Engine(EngineSettings(device="cuda", acceleration="off"))
        _, expected = request_ms(reference, model, args.family, half)
        report["max difference to acceleration off, with the LoRA"] = float(np.abs(with_lora[0][1] - expected).max())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
