"""Lookup throughput and bytes of uniform K-wide tables versus planned tier tables.

Criteo-shaped synthetic tables (26 single-valued features, Criteo's cardinalities capped at
``--max-rows``), ids drawn Zipf-like (id 0 most frequent), and pruning masks with a frequency-dependent
kept-dims profile: row i keeps about ``c * (i + 1) ** -0.3`` columns (0 in the far tail), with c set so
that the mean kept dims is K / rate. Two mask shapes:

- ``blocks``: 8 frequency blocks per table, each keeping one prefix of columns (DNIS / AutoSrh style):
  shared column maps, run remaps;
- ``elementwise``: every row keeps its own random columns (PEP style): per-row column maps.

Both providers run sharded through ``shard_model`` in one gloo process (fused FBGEMM CPU kernels, SGD),
forward only and forward + backward (the fused update included). One JSON row per configuration::

    {"bench": "lookup_throughput", "provider": "tiered", "embedding_dim": 32, "pattern": "blocks",
     "rate": 4, "mode": "fwd_bwd", "lookups_per_s": ..., "effective_gb_per_s": ..., "embedding_bytes": ...}

Times are medians over steps, as wall time (``step_ms``) and as this process's CPU time
(``cpu_step_ms``, steadier when other jobs share the cores). ``effective_gb_per_s`` counts the bytes
a lookup must read: K * 4 per id (uniform), or the id's tier width * 4 plus its remap entry and, for
per-row maps, its map row (tiered).

Example::

    OMP_NUM_THREADS=1 python benchmarks/lookup_throughput.py --out bench-out/lookup.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Dict, List, Tuple

import torch
from torchrec import KeyedJaggedTensor

from recdim.config import TrainConfig
from recdim.layout.tier_plan import TablePlan
from recdim.modules.provider import EmbeddingProvider
from recdim.modules.tiered import TieredEmbeddingProvider
from recdim.modules.uniform import UniformEmbeddingProvider, table_name
from recdim.prune.planner import PlannerConfig, plan_table
from recdim.train.distributed import init_distributed, shard_model

CRITEO_CARDINALITIES = [
    1460,
    583,
    10131227,
    2202608,
    305,
    24,
    12517,
    633,
    3,
    93145,
    5683,
    8351593,
    3194,
    27,
    14992,
    5461306,
    10,
    5652,
    2173,
    4,
    7046547,
    18,
    15,
    286181,
    105,
    142572,
]


def kept_dims(n: int, K: int, rate: float) -> torch.Tensor:
    """[n] frequency-dependent kept dims with mean about K / rate."""
    base = (torch.arange(n, dtype=torch.float64) + 1) ** -0.3
    lo, hi = 0.0, 1e6
    for _ in range(60):
        c = (lo + hi) / 2
        mean = (c * base).floor().clamp(max=K).mean()
        lo, hi = (c, hi) if mean < K / rate else (lo, c)
    return (hi * base).floor().clamp(max=K).long()


def make_mask(n: int, K: int, rate: float, pattern: str, g: torch.Generator) -> torch.Tensor:
    dims = kept_dims(n, K, rate)
    if pattern == "blocks":
        # 8 blocks with geometrically growing sizes; a block keeps the prefix of its mean kept dims.
        edges = torch.unique(torch.cat([torch.zeros(1), (n ** (torch.arange(1, 8) / 8.0)).floor()]).long())
        block = torch.searchsorted(edges, torch.arange(n), right=True) - 1
        means = torch.bincount(block, weights=dims.double()) / torch.bincount(block).double()
        dims = means.round().long()[block]
        return torch.arange(K) < dims.unsqueeze(1)
    order = torch.rand(n, K, generator=g).argsort(dim=1)
    return order < dims.unsqueeze(1)


class Net(torch.nn.Module):
    def __init__(self, provider: EmbeddingProvider) -> None:
        super().__init__()
        self.provider = provider
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self.provider(kjt).values() * self.scale


def id_batches(sizes: Dict[str, int], B: int, count: int, g: torch.Generator) -> List[KeyedJaggedTensor]:
    probs = {f: (torch.arange(n, dtype=torch.float64) + 1) ** -1.1 for f, n in sizes.items()}
    out = []
    for _ in range(count):
        ids = torch.cat([torch.multinomial(p, B, replacement=True, generator=g) for p in probs.values()])
        out.append(
            KeyedJaggedTensor.from_lengths_sync(
                keys=list(sizes), values=ids, lengths=torch.ones(len(sizes) * B, dtype=torch.int32)
            )
        )
    return out


def bytes_read(kjt: KeyedJaggedTensor, plans: List[TablePlan], K: int) -> int:
    """Bytes the lookups of ``kjt`` read: values, remap entries and per-row maps (tiered), or K * 4 per id."""
    if not plans:
        return kjt.values().numel() * K * 4
    total = 0
    for p, (f, jt) in zip(plans, kjt.to_dict().items()):
        rows = p.global_rows()[jt.values()]
        cost = torch.zeros(p.kept_rows + 1, dtype=torch.int64)  # last entry: dropped id
        for j, t in enumerate(p.tiers):
            o = p.tier_offsets[j]
            cost[o : o + t.num_rows] = t.width * 4 + (0 if t.shared else t.width * t.column_map.element_size())
        remap_entry = next(iter(p.remap.tensors().values())).element_size()
        total += int(cost[rows].sum()) + rows.numel() * remap_entry
    return total


def measure(dmp: torch.nn.Module, batches: List[KeyedJaggedTensor], warmup: int, backward: bool) -> Tuple[float, float]:
    """Median wall seconds and median process CPU seconds per batch (medians, and CPU time, resist other
    processes sharing the cores)."""

    def step(kjt: KeyedJaggedTensor) -> None:
        if backward:
            dmp(kjt).square().mean().backward()
        else:
            with torch.no_grad():
                dmp(kjt)

    for kjt in batches[:warmup]:
        step(kjt)
    wall, cpu = [], []
    for kjt in batches[warmup:]:
        t0, c0 = time.perf_counter(), time.process_time()
        step(kjt)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench-out/lookup_throughput.jsonl")
    ap.add_argument("--dims", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--rates", type=float, nargs="+", default=[2, 4, 8])
    ap.add_argument("--patterns", nargs="+", default=["blocks", "elementwise"])
    ap.add_argument("--max-rows", type=int, default=100_000)
    ap.add_argument("--max-tiers", type=int, default=4)
    ap.add_argument(
        "--widths", type=int, nargs="*", default=[], help="tier width palette (default: all multiples of 4)"
    )
    ap.add_argument("--no-uniform", action="store_true", help="skip the uniform baselines")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ctx = init_distributed("cpu")
    cfg = TrainConfig(sharding="table_wise", embedding_optimizer="sgd", embedding_lr=0.01, device="cpu")
    sizes = {f"c{i}": min(c, args.max_rows) for i, c in enumerate(CRITEO_CARDINALITIES)}
    g = torch.Generator().manual_seed(args.seed)
    batches = id_batches(sizes, args.batch_size, args.warmup + args.steps, g)
    lookups = args.batch_size * len(sizes)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)

    configs = [] if args.no_uniform else [(K, "uniform", "-", 1.0) for K in args.dims]
    configs += [(K, "tiered", pattern, rate) for K in args.dims for pattern in args.patterns for rate in args.rates]
    for K, kind, pattern, rate in configs:
        t0 = time.perf_counter()
        plans: List[TablePlan] = []
        if kind == "uniform":
            provider: EmbeddingProvider = UniformEmbeddingProvider(sizes, K, device=torch.device("meta"))
        else:
            plans = [
                plan_table(
                    make_mask(n, K, rate, pattern, g),
                    table_name(f),
                    f,
                    PlannerConfig(args.max_tiers, tuple(args.widths)),
                )
                for f, n in sizes.items()
            ]
            provider = TieredEmbeddingProvider(plans, device=torch.device("meta"))
        plan_s = time.perf_counter() - t0
        dmp = shard_model(Net(provider), cfg, ctx)
        read = sum(bytes_read(b, plans, K) for b in batches[args.warmup :]) / args.steps
        for mode in ("fwd", "fwd_bwd"):
            sec, cpu = measure(dmp, batches, args.warmup, backward=mode == "fwd_bwd")
            per_kind = {}
            if plans:
                per_kind = {
                    k: sum(getattr(p.bytes(), k) for p in plans)
                    for k in ("values", "column_maps", "remap", "floor", "csr")
                }
            row = {
                "bench": "lookup_throughput",
                "provider": kind,
                "embedding_dim": K,
                "pattern": pattern,
                "rate": rate,
                "mode": mode,
                "batch_size": args.batch_size,
                "tables": len(sizes),
                "rows": sum(sizes.values()),
                "max_tiers": args.max_tiers if plans else None,
                "widths": args.widths if plans else None,
                "tier_modules": len(getattr(provider, "ecs", ())) + (getattr(provider, "ebc", None) is not None),
                "tiers": sum(len(p.tiers) for p in plans) if plans else len(sizes),
                "per_row_tiers": sum(not t.shared for p in plans for t in p.tiers),
                "step_ms": 1000 * sec,
                "lookups_per_s": lookups / sec,
                "effective_gb_per_s": read / sec / 1e9,
                "cpu_step_ms": 1000 * cpu,
                "lookups_per_cpu_s": lookups / cpu,
                "effective_gb_per_cpu_s": read / cpu / 1e9,
                "embedding_bytes": provider.embedding_bytes(),
                "uniform_bytes": sum(sizes.values()) * K * 4,
                "bytes_by_kind": per_kind,
                "mean_kept_dims": float(sum(int(p.kept_dims().sum()) for p in plans) / sum(sizes.values()))
                if plans
                else K,
                "plan_s": plan_s,
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "host": platform.node(),
                "torch": torch.__version__,
                "world_size": ctx.world_size,
            }
            print(json.dumps({k: v for k, v in row.items() if k not in ("host", "torch", "bytes_by_kind")}), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        del dmp


if __name__ == "__main__":
    main()
