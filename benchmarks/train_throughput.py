"""Training samples/s and peak memory of DLRM on Criteo-shaped synthetic data, unsharded and sharded.

Each configuration runs in fresh processes (``torch.distributed.run`` with 1 or N gloo/nccl ranks),
warms up, times a fixed number of steps, and appends one JSON row per configuration:

    {"bench": "train_throughput", "arch": "dlrm", "world_size": 2, "sharding": "table_wise",
     "samples_per_s": ..., "step_ms": ..., "peak_rss_bytes_max": ..., "peak_rss_bytes_sum": ..., ...}

Example::

    python benchmarks/train_throughput.py --out bench-out/train_throughput.jsonl --worlds 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import torch


def _worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from recdim.config import load
    from recdim.train.memory import peak_memory
    from recdim.train.run import open_session

    overrides = [
        f"data.path={args.data}",
        f"train.batch_size={args.batch_size}",
        f"train.sharding={args.sharding}",
        "train.progress=false",
        f"train.device={args.device}",
        *args.set,
    ]
    cfg = load(args.config, tuple(overrides))
    s = open_session(cfg)
    trainer, loader = s.trainer, s.train_loader
    batches = iter(loader.epoch(0))
    for _ in range(args.warmup):
        trainer.train_step(next(batches))
    if s.ctx.device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(next(batches))
    if s.ctx.device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    elapsed = time.perf_counter() - t0
    rss = torch.tensor([peak_memory()["peak_rss_bytes"]], dtype=torch.float64)
    all_rss = [torch.zeros_like(rss) for _ in range(s.ctx.world_size)]
    dist.all_gather(all_rss, rss)
    if s.ctx.is_main:
        row = {
            "bench": "train_throughput",
            "arch": cfg.model.arch,
            "embedding_dim": cfg.model.embedding_dim,
            "world_size": s.ctx.world_size,
            "sharding": args.sharding,
            "embedding_optimizer": cfg.train.embedding_optimizer,
            "device": str(s.ctx.device),
            "batch_size": args.batch_size,
            "steps": args.steps,
            "step_ms": 1000 * elapsed / args.steps,
            "samples_per_s": args.steps * args.batch_size / elapsed,
            "peak_rss_bytes_max": int(max(r.item() for r in all_rss)),
            "peak_rss_bytes_sum": int(sum(r.item() for r in all_rss)),
            "embedding_params": s.model.provider.embedding_params(),
            "embedding_bytes": s.model.provider.embedding_bytes(),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        }
        if s.ctx.device.type == "cuda":
            row["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row))
    dist.destroy_process_group()


def main(argv: List[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.toml")
    p.add_argument("--data", default="", help="prepared dataset (default: prepare the config's synthetic data)")
    p.add_argument("--out", default="bench-out/train_throughput.jsonl")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sharding", default="table_wise")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], help="extra config override")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not args.data:
        from recdim.config import load
        from recdim.data.preprocess import prepare

        cfg = load(args.config)
        args.data = cfg.prepare.output
        if not (Path(args.data) / "meta.json").exists():
            prepare(cfg.prepare)
    for world in args.worlds:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={world}",
            __file__,
            "--worker",
            "--config",
            args.config,
            "--data",
            args.data,
            "--out",
            args.out,
            "--sharding",
            args.sharding,
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--device",
            args.device,
        ]
        for s in args.set:
            cmd += ["--set", s]
        env = dict(
            os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // world)))
        )
        subprocess.run(cmd, check=True, env=env)


if __name__ == "__main__":
    main()
