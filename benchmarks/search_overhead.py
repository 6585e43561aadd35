"""Search overhead: training-step time and peak memory of each search method against the plain
(uniform) model of the same arch on the same data.

Each (arch, variant) runs ``--repeats`` times, each in a fresh process (so peak RSS is its own; the
repeats go in rounds of one process per variant, so a drifting background load weighs on all alike):
one-process DMP with the fused table optimizer, ``--warmup`` steps, then ``--steps`` timed steps
including the method's hooks (DNIS / AutoDim architecture steps on validation batches, PEP's threshold
pressure and non-zero counts). A variant is a method plus config overrides (``--variant dnis_f10 dnis
search.dnis.update_every=10``). One JSON row per (arch, variant): the median over the processes of the
wall step time (``step_ms``) and of the process CPU time per step (``cpu_step_ms``), each process's
times, and ``overhead`` / ``cpu_overhead``: the medians over the uniform model's.

``--criteo`` runs the Criteo-shaped case: 26 tables of about 100k rows, batch 4096
(``configs/bench_criteo_shaped.toml``, prepared on first use).

Example::

    python benchmarks/search_overhead.py --out bench-out/search_overhead.jsonl --arches dlrm deepfm
    python benchmarks/search_overhead.py --criteo --out bench-out/search_overhead_criteo.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

# (label, method, overrides): the rows. DNIS's default takes an alpha step every training step.
VARIANTS = (
    ("uniform", "uniform", ()),
    ("dnis", "dnis", ("search.dnis.update_every=1",)),
    ("dnis_f10", "dnis", ("search.dnis.update_every=10",)),
    ("pep", "pep", ()),
    ("autodim", "autodim", ()),
)
CRITEO_CONFIG = "configs/bench_criteo_shaped.toml"


def _worker(args: argparse.Namespace) -> None:
    """One run in this process: prints its JSON row."""
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
        factory = m.provider_factory(ds, ds.feature_names(cfg.data.features))
        session = open_session(cfg, factory, m.hooks, search_split=m.search_split())
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
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    row = {
        "bench": "search_overhead",
        "method": args.method,
        "arch": args.arch,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "step_ms": 1000 * elapsed / args.steps,
        "cpu_step_ms": 1000 * cpu / args.steps,
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


def _run(args: argparse.Namespace, arch: str, method: str, overrides: List[str]) -> Dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--config", args.config, "--data", args.data, "--arch", arch]
    cmd += ["--method", method, "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup)]
    for s in [*args.set, *overrides]:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{arch} {method} failed:\n{proc.stderr[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def main(argv: List[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.toml")
    p.add_argument("--criteo", action="store_true", help=f"the Criteo-shaped case ({CRITEO_CONFIG}, batch 4096)")
    p.add_argument("--data", default="", help="prepared dataset (default: the config's, prepared if missing)")
    p.add_argument("--out", default="bench-out/search_overhead.jsonl")
    p.add_argument("--arches", nargs="+", default=["dlrm", "deepfm"])
    p.add_argument(
        "--variant",
        nargs="+",
        action="append",
        metavar="LABEL METHOD [KEY=VALUE ...]",
        help="a run: label, method (uniform or a search method), config overrides (repeatable; default: "
        + ", ".join(v[0] for v in VARIANTS)
        + ")",
    )
    p.add_argument("--batch-size", type=int, default=0, help="default 2048 (4096 with --criteo)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per run; rows report medians")
    p.add_argument("--set", action="append", default=[], help="extra config override for every run")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--arch", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.criteo:
        args.config = CRITEO_CONFIG
    args.batch_size = args.batch_size or (4096 if args.criteo else 2048)
    if args.worker:
        _worker(args)
        return
    variants = [(v[0], v[1], tuple(v[2:])) for v in args.variant] if args.variant else list(VARIANTS)
    if variants[0][1] != "uniform":
        variants.insert(0, VARIANTS[0])
    if not args.data:
        from recdim.config import load
        from recdim.data.preprocess import prepare

        cfg = load(args.config)
        args.data = cfg.prepare.output
        if not (Path(args.data) / "meta.json").exists():
            prepare(cfg.prepare)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for arch in args.arches:
        base: Dict[str, float] = {}
        # Rounds of one process per variant (not all repeats of one variant in a row), so that a load
        # that drifts while the benchmark runs weighs on every variant alike.
        rounds = [
            [_run(args, arch, method, list(overrides)) for _, method, overrides in variants]
            for _ in range(args.repeats)
        ]
        for i, (label, method, overrides) in enumerate(variants):
            runs = [r[i] for r in rounds]
            row = dict(runs[-1], variant=label, overrides=list(overrides), repeats=args.repeats)
            for key in ("step_ms", "cpu_step_ms", "peak_rss_bytes"):
                row[key] = statistics.median(r[key] for r in runs)
                row[f"{key}_runs"] = [r[key] for r in runs]
            row["samples_per_s"] = args.batch_size / row["step_ms"] * 1000
            if label == "uniform":
                base = {k: row[k] for k in ("step_ms", "cpu_step_ms", "peak_rss_bytes")}
            if base:
                row["overhead"] = row["step_ms"] / base["step_ms"]
                row["cpu_overhead"] = row["cpu_step_ms"] / base["cpu_step_ms"]
                row["peak_rss_ratio"] = row["peak_rss_bytes"] / base["peak_rss_bytes"]
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(
                f"{arch:8s} {label:10s} step {row['step_ms']:7.2f} ms (cpu {row['cpu_step_ms']:7.2f})  "
                f"overhead {row.get('overhead', float('nan')):.2f}x "
                f"(cpu {row.get('cpu_overhead', float('nan')):.2f}x)  "
                f"peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB"
            )


if __name__ == "__main__":
    main()
