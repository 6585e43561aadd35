"""Peak memory and step time of retraining a pruned model: masked K-wide tables versus tier tables.

The masked K-wide model stores every table whole (N x K, plus its optimizer state) and only zeroes the
pruned entries; retraining on tiers stores the kept values alone. Each configuration runs in a fresh
process (its own peak RSS): Criteo-shaped tables (cardinalities capped at ``--max-rows``), a
frequency-dependent pruning profile at each rate (see ``lookup_throughput.py``), one-process DMP with
the fused row-wise Adagrad, ``--steps`` training steps on Zipf-distributed ids. One JSON row each::

    {"bench": "retrain_memory", "provider": "tiered", "rate": 4, "peak_rss_bytes": ...,
     "model_rss_bytes": ..., "embedding_bytes": ..., "step_ms": ...}

``model_rss_bytes`` is the peak RSS while the model is built and trained minus the RSS just before: plans
(and their masks) are built first and the peak is reset after them (Linux ``clear_refs``;
``model_rss_outside_plans`` says whether the reset took). Memory is measured in a second fresh process whose
allocator maps every allocation above ``MMAP_THRESHOLD`` on its own (glibc ``MALLOC_MMAP_THRESHOLD_``), so the
RSS follows live memory instead of the heap the allocator keeps from earlier steps (which depends on the
order of allocations more than on the model); ``*_heap_allocator`` are the same figures from the timed
process, with the default allocator. ``step_ms`` comes from the timed process.

Example::

    OMP_NUM_THREADS=1 python benchmarks/retrain_memory.py --out bench-out/retrain_memory.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import List

HERE = Path(__file__).resolve().parent
MMAP_THRESHOLD = 128 * 1024
"""Allocations above this many bytes are mapped on their own in the memory-measuring process."""


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """The process's peak RSS since the last :func:`_reset_peak` (VmHWM), else since it started."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _rss()


def _reset_peak() -> bool:
    """Resets the peak RSS to the current RSS (Linux ``clear_refs`` 5); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _worker(args: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from lookup_throughput import CRITEO_CARDINALITIES, Net, id_batches, make_mask

    from recdim.config import TrainConfig
    from recdim.modules.table_init import init_tables
    from recdim.modules.tiered import TieredEmbeddingProvider
    from recdim.modules.uniform import UniformEmbeddingProvider, table_name
    from recdim.prune.planner import PlannerConfig, plan_table
    from recdim.train.distributed import build_optimizer, init_distributed, shard_model

    torch.set_num_threads(1)
    K = args.dim
    sizes = {f"C{i + 1}": min(c, args.max_rows) for i, c in enumerate(CRITEO_CARDINALITIES)}
    g = torch.Generator().manual_seed(0)
    batches = id_batches(sizes, args.batch_size, args.steps + 2, g)
    ctx = init_distributed("cpu")
    plans = []
    if args.provider != "uniform":  # plans first: their masks are not model memory
        plans = [
            plan_table(make_mask(n, K, args.rate, "blocks", g), table_name(f), f, PlannerConfig(max_tiers=4))
            for f, n in sizes.items()
        ]
    gc.collect()
    peak_reset = _reset_peak()
    before = _current_rss()
    if args.provider == "uniform":
        provider = UniformEmbeddingProvider(sizes, K, device=torch.device("meta"))
    else:
        provider = TieredEmbeddingProvider(plans, device=torch.device("meta"))
    cfg = TrainConfig(device="cpu", embedding_optimizer="rowwise_adagrad", embedding_lr=0.05)
    dmp = shard_model(Net(provider), cfg, ctx)
    init_tables(dmp, 0, 0.05)
    opt = build_optimizer(dmp, cfg, ctx)
    for kjt in batches[:2]:
        opt.zero_grad()
        dmp(kjt).square().mean().backward()
        opt.step()
    t0 = time.perf_counter()
    for kjt in batches[2:]:
        opt.zero_grad()
        dmp(kjt).square().mean().backward()
        opt.step()
    step_ms = 1000 * (time.perf_counter() - t0) / args.steps
    print(
        json.dumps(
            {
                "bench": "retrain_memory",
                "provider": args.provider,
                "rate": args.rate if args.provider != "uniform" else 1.0,
                "embedding_dim": K,
                "rows": sum(sizes.values()),
                "batch_size": args.batch_size,
                "steps": args.steps,
                "step_ms": step_ms,
                "peak_rss_bytes": _rss(),
                "model_rss_bytes": _peak_rss() - before,
                "model_rss_outside_plans": peak_reset,
                "embedding_params": provider.embedding_params(),
                "embedding_bytes": provider.embedding_bytes(),
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
            }
        )
    )


def main(argv: List[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench-out/retrain_memory.jsonl")
    p.add_argument("--rates", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--max-rows", type=int, default=200_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--provider", default="uniform", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=1.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    runs = [("uniform", 1.0)] + [("tiered", r) for r in args.rates]
    for provider, rate in runs:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--provider",
            provider,
            "--rate",
            str(rate),
            "--dim",
            str(args.dim),
            "--max-rows",
            str(args.max_rows),
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
        ]
        # Two fresh processes: one timed with the default allocator, one measuring memory with every large
        # allocation mapped and unmapped on its own, so that the RSS follows the live memory rather than
        # what the allocator's heap kept from earlier steps.
        rows = []
        for env in ({}, {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1", **env))
            if proc.returncode:
                raise RuntimeError(f"{provider} {rate} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1]))
        row, memory = rows
        row.update(
            model_rss_bytes_heap_allocator=row["model_rss_bytes"],
            peak_rss_bytes_heap_allocator=row["peak_rss_bytes"],
            model_rss_bytes=memory["model_rss_bytes"],
            peak_rss_bytes=memory["peak_rss_bytes"],
            mmap_threshold=MMAP_THRESHOLD,
        )
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(
            f"{provider:8s} rate {rate:4.1f}: peak RSS {row['peak_rss_bytes'] / 2**20:7.0f} MiB "
            f"(model {row['model_rss_bytes'] / 2**20:6.0f} MiB), "
            f"embedding bytes {row['embedding_bytes'] / 2**20:6.1f} MiB, step {row['step_ms']:.1f} ms"
        )


if __name__ == "__main__":
    main()
