"""Peak reserved GPU memory of sd_core for one case, with the memory set aside for the CUDA graphs sized by a given
constant (``sd_core.acceleration._VAE_DECODE_BYTES_PER_PIXEL_AND_DTYPE_BYTE``), and the graph pool's segments.

One process per value (the allocator's state carries over otherwise): three requests, then the peak and the
sizes of the graphs' memory segments by stream. Where the decode does not fit in the set-aside block, a segment of
its own shows up beside it.

    for v in 768 832 896 960 1024; do python benchmarks/graph_memory.py sd15_cn_img2img $v; done
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpu_benchmark

from sd_core import acceleration


def main() -> None:
    case_name, value = sys.argv[1], int(sys.argv[2])
    acceleration._VAE_DECODE_BYTES_PER_PIXEL_AND_DTYPE_BYTE = value
    case = gpu_benchmark.CASES[case_name]
    root = Path(f"/tmp/sd_core-graph-memory-{case.family}")  # the random models, kept for the next value
    if not (root / "paths.json").exists():
        root.mkdir(exist_ok=True)
        paths = gpu_benchmark.build_random_models(case.family, root)
        (root / "paths.json").write_text(json.dumps([str(path) for path in paths]))
    model_dir, controlnet_dir = map(Path, json.loads((root / "paths.json").read_text()))
    torch.cuda.reset_peak_memory_stats()
    _engine, run = gpu_benchmark.sd_core_runner(case, model_dir, controlnet_dir, gpu_benchmark.inputs(case))
    for _ in range(3):
        run(case.steps)
    torch.cuda.synchronize()
    pools: dict[str, list[int]] = {}
    for segment in torch.cuda.memory_snapshot():
        if tuple(segment["segment_pool_id"]) != (0, 0):  # the graphs' pool, not the ordinary allocations
            pools.setdefault(f"stream {segment['stream']}", []).append(segment["total_size"] >> 20)
    report = {
        "case": case_name,
        "value": value,
        "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 4),
        "pool_segments_mib": {stream: sorted(sizes, reverse=True) for stream, sizes in pools.items()},
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
