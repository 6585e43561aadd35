"""Search overhead: training-step time and peak memory of each search method against the plain
(uniform) model of the same arch on the same data.

Each (arch, method) runs in a fresh process (so peak RSS is its own): one-process DMP with the fused
table optimizer, ``--warmup`` steps, then ``--steps`` timed steps including the method's hooks
(DNIS / AutoDim architecture steps on validation batches, PEP's threshold pressure and non-zero
counts). One JSON row per run; ``overhead`` is the step time over the uniform model's.

Example::

    python benchmarks/search_overhead.py --out bench-out/search_overhead.jsonl --arches dlrm deepfm
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

METHODS = ("uniform", "dnis", "pep", "autodim")


def _worker(args: argparse.Namespace) -> None:
    import torch

    from recdim.config import load
    from recdim.data.prepared import PreparedDataset
    from recdim.search.method import create
    from recdim.train.memory import peak_memory
    from recdim.train.run import open_session

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = load(
        args.config,
        (
            f"data.path={args.data}",
            f"model.arch={args.arch}",
            f"train.batch_size={args.batch_size}",
            "train.progress=false",
            "train.device=cpu",
            *args.set,
        ),
    )
    if args.method == "uniform":
        session = open_session(cfg)
    else:
        m = create(args.method, cfg, kind="search")
        ds = PreparedDataset(cfg.data_path)
        session = open_session(cfg, m.provider_factory(ds, ds.feature_names(cfg.data.features)), m.hooks)
    trainer = session.trainer
    loader = session.train_loader

    def forever():
        epoch = 0
        while True:
            yield from loader.epoch(epoch)
            epoch += 1

    batches = forever()

    def step() -> None:
        batch = next(batches)
        trainer.train_step(batch)
        for hook in trainer.hooks:
            hook.after_step(trainer, trainer.global_step, batch)

    for hook in trainer.hooks:
        hook.on_train_start(trainer)
    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - t0
    row = {
        "bench": "search_overhead",
        "method": args.method,
        "arch": args.arch,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "step_ms": 1000 * elapsed / args.steps,
        "samples_per_s": args.steps * args.batch_size / elapsed,
        **peak_memory(),
        "embedding_params": session.model.provider.embedding_params(),
        "embedding_bytes": session.model.provider.embedding_bytes(),
        "dataset": str(args.data),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(row))


def main(argv: List[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.toml")
    p.add_argument("--data", default="", help="prepared dataset (default: the config's, prepared if missing)")
    p.add_argument("--out", default="bench-out/search_overhead.jsonl")
    p.add_argument("--arches", nargs="+", default=["dlrm", "deepfm"])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--set", action="append", default=[], help="extra config override")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--arch", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    if not args.data:
        from recdim.config import load
        from recdim.data.preprocess import prepare

        cfg = load(args.config)
        args.data = cfg.prepare.output
        if not (Path(args.data) / "meta.json").exists():
            prepare(cfg.prepare)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for arch in args.arches:
        base = None
        for method in args.methods:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--config",
                args.config,
                "--data",
                args.data,
                "--arch",
                arch,
                "--method",
                method,
                "--batch-size",
                str(args.batch_size),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ]
            for s in args.set:
                cmd += ["--set", s]
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{arch} {method} failed:\n{proc.stderr[-3000:]}")
            row = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
            if method == "uniform":
                base = row
            if base is not None:
                row["overhead"] = row["step_ms"] / base["step_ms"]
                row["peak_rss_ratio"] = row["peak_rss_bytes"] / base["peak_rss_bytes"]
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(
                f"{arch:8s} {method:8s} step {row['step_ms']:7.2f} ms  "
                f"overhead {row.get('overhead', float('nan')):.2f}x  "
                f"peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB"
            )


if __name__ == "__main__":
    main()
