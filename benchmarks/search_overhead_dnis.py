"""Cost of DNIS soft selection against the plain uniform provider: forward + backward step time and peak RSS.

Each configuration runs in a fresh process (one-rank gloo group, tables sharded by DMP, fused row-wise
Adagrad), times ``--steps`` forward + backward passes of the provider alone (loss = a fixed random
projection of its output) after ``--warmup``, and appends one JSON row:

    {"bench": "search_overhead_dnis", "provider": "soft_split", "bag": 1, "step_ms": ..., "peak_rss_bytes": ..., ...}

Providers: ``uniform`` (UniformEmbeddingProvider), and SoftSelectionProvider with every feature on one
path: ``soft_per_id`` (single-valued fast path, only for bags of one id), ``soft_split`` (block-split
pooling) or ``soft_sequence`` (per-id rows from an EmbeddingCollection).
``--bag 1`` gives single-valued features; ``--bag n`` gives bags of 0..2n-1 ids (mean n).

Example::

    OMP_NUM_THREADS=1 python benchmarks/search_overhead_dnis.py --out bench-out/search_overhead_dnis.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List

import torch


def _provider(kind: str, num: Dict[str, int], args: argparse.Namespace) -> torch.nn.Module:
    from recdim.layout.blocks import per_table_blocks
    from recdim.modules.soft_selection import BlockSplitPooling, SequenceScaling, SoftSelectionProvider
    from recdim.modules.uniform import UniformEmbeddingProvider

    meta = torch.device("meta")
    if kind == "uniform":
        return UniformEmbeddingProvider(num, args.dim, device=meta)
    plan = per_table_blocks(num, args.blocks) if args.blocking == "per_table" else _global_plan(num, args.blocks)
    path = {"soft_split": BlockSplitPooling, "soft_sequence": SequenceScaling}.get(kind)
    paths = {f: path() for f in num} if path is not None else {}
    return SoftSelectionProvider(num, args.dim, plan, paths, device=meta)


def _global_plan(num: Dict[str, int], L: int):
    import numpy as np

    from recdim.layout.blocks import global_blocks

    rng = np.random.default_rng(0)
    return global_blocks({f: np.sort(rng.zipf(1.2, n))[::-1].copy() for f, n in num.items()}, L)


class _Net(torch.nn.Module):
    def __init__(self, provider: torch.nn.Module) -> None:
        super().__init__()
        self.provider = provider
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, kjt):  # type: ignore[no-untyped-def]
        return self.provider(kjt).values() * self.scale


def _batches(num: Dict[str, int], args: argparse.Namespace, count: int):
    from torchrec import KeyedJaggedTensor

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        values, lengths = [], []
        for n in num.values():
            ln = (
                torch.ones(args.batch, dtype=torch.int32)
                if args.bag == 1
                else torch.randint(0, 2 * args.bag, (args.batch,), generator=g, dtype=torch.int32)
            )
            # Zipf-like ids: frequent ids are small, as in prepared data.
            ids = (torch.rand(int(ln.sum()), generator=g) ** 3 * n).long().clamp_(max=n - 1)
            values.append(ids)
            lengths.append(ln)
        out.append(
            KeyedJaggedTensor.from_lengths_sync(keys=list(num), values=torch.cat(values), lengths=torch.cat(lengths))
        )
    return out


def _worker(args: argparse.Namespace) -> None:
    from recdim.config import TrainConfig
    from recdim.modules.table_init import init_tables
    from recdim.train.distributed import init_distributed, shard_model
    from recdim.train.memory import peak_memory

    torch.set_num_threads(args.threads)
    num = {f"f{j}": args.rows for j in range(args.features)}
    ctx = init_distributed("cpu")
    dmp = shard_model(_Net(_provider(args.provider, num, args)), TrainConfig(device="cpu", embedding_lr=0.01), ctx)
    init_tables(dmp, 0, 0.05)
    batches = _batches(num, args, 8)
    proj = torch.randn(args.batch, args.features * args.dim, generator=torch.Generator().manual_seed(1))

    def step(i: int) -> None:
        out = dmp(batches[i % len(batches)])
        (out * proj).sum().backward()

    for i in range(args.warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    elapsed = time.perf_counter() - t0
    provider = dmp.module.provider
    row = {
        "bench": "search_overhead_dnis",
        "provider": args.provider,
        "bag": args.bag,
        "features": args.features,
        "rows": args.rows,
        "embedding_dim": args.dim,
        "num_blocks": args.blocks,
        "blocking": args.blocking,
        "batch_size": args.batch,
        "steps": args.steps,
        "threads": args.threads,
        "step_ms": 1000 * elapsed / args.steps,
        "peak_rss_bytes": peak_memory()["peak_rss_bytes"],
        "embedding_params": provider.embedding_params(),
        "embedding_bytes": provider.embedding_bytes(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    print("ROW " + json.dumps(row), flush=True)


def main(argv: List[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench-out/search_overhead_dnis.jsonl")
    p.add_argument("--features", type=int, default=26)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--blocking", choices=["global", "per_table"], default="global")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--bags", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--provider", default="uniform", help=argparse.SUPPRESS)
    p.add_argument("--bag", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    common = [
        f"--{k}={getattr(args, k)}"
        for k in ("features", "rows", "dim", "blocks", "blocking", "batch", "steps", "warmup", "threads")
    ]
    for bag in args.bags:
        for kind in (
            ("uniform", "soft_per_id", "soft_split", "soft_sequence")
            if bag == 1
            else ("uniform", "soft_split", "soft_sequence")
        ):
            cmd = [sys.executable, __file__, "--worker", f"--provider={kind}", f"--bag={bag}", *common]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            rows = [ln[4:] for ln in res.stdout.splitlines() if ln.startswith("ROW ")]
            if res.returncode or not rows:
                raise RuntimeError(f"{kind} bag={bag} failed:\n{res.stderr[-3000:]}")
            with open(args.out, "a") as fh:
                fh.write(rows[0] + "\n")
            row = json.loads(rows[0])
            print(
                f"bag={bag} {kind:12s} step {row['step_ms']:8.2f} ms  peak RSS {row['peak_rss_bytes'] / 2**20:7.1f} MiB"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
