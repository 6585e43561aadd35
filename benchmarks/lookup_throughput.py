"""Lookup throughput of uniform K-wide tables, of tier tables, and of the ideal plain TBE of the same tiers.

Synthetic Criteo-shaped tables (``--tables`` features with Criteo's cardinalities capped at ``--max-rows``,
or ``--rows`` rows each), ids drawn Zipf-like (id 0 most frequent), and pruning masks with a
frequency-dependent kept-dims profile: row i keeps about ``c * (i + 1) ** -0.3`` columns (0 in the far
tail), with c set so that the mean kept dims is K / rate. Frequent ids keep most columns, so the tier width a
lookup reads (``lookup_width``) stays well above K / rate. Two mask shapes:

- ``blocks``: 8 frequency blocks per table, each keeping one prefix of columns (DNIS / AutoSrh style):
  shared column maps, run remaps;
- ``elementwise``: every row keeps its own random columns (PEP style): per-row column maps.

Three lookups per (K, pattern, rate), each forward only (``fwd``) and forward + backward with the fused SGD
update (``fwd_bwd``), on the same batches, their steps interleaved so that they share the machine's load:

- ``uniform``: the K-wide tables, sharded through ``shard_model`` in one gloo process;
- ``tiered``: :class:`~recdim.modules.tiered.TieredEmbeddingProvider` over the planned tiers, sharded the
  same way. With the native kernels and one process, the forward reads the tier rows in place in one pass
  into ``[B, F, K]`` and the backward updates the fused kernels' tables and optimizer state in place
  (``"lookup": "one_pass"`` / ``"one_pass_train"`` in the row); otherwise ids are routed (remap, routing, one
  pooled lookup of every tier table, scatter; ``"routed"``);
- ``ideal``: one plain FBGEMM TBE holding the same tier tables (per-table widths, sum pooling), fed ids
  already remapped and grouped per tier as the tier collection reads them — the floor a mixed-width lookup
  can reach; its output is the ``[S, sum of tier widths]`` pooled block, not ``[B, F, K]``.

Every model multiplies its output by one dense parameter and the loss is its mean square. The sharded models
run without their DDP wrapper (with one process it only copies the output), so that all three share one
harness. One JSON row per
(lookup, K, pattern, rate, mode)::

    {"bench": "lookup_throughput", "provider": "tiered", "embedding_dim": 32, "pattern": "blocks",
     "rate": 4, "mode": "fwd_bwd", "cpu_step_ms": ..., "vs_ideal": ..., "speedup_vs_uniform": ...}

Times are medians over steps, as this process's CPU time (``cpu_step_ms``, steadier when other jobs share the
cores) and wall time (``step_ms``); ``vs_ideal`` and ``speedup_vs_uniform`` compare CPU times of one
interleaved run. ``effective_gb_per_s`` counts the bytes a lookup must read: K * 4 per id (uniform), or the
id's tier width * 4 plus its remap entry and, for per-row maps, its map row (tiered).

Example::

    OMP_NUM_THREADS=1 python benchmarks/lookup_throughput.py --rows 100000 --dims 16 64 --rates 4 20 \\
        --batch-size 4096 --out bench-out/lookup.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    EmbeddingLocation,
    SplitTableBatchedEmbeddingBagsCodegen,
)
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

LR = 0.01


def table_sizes(tables: int, rows: int, max_rows: int) -> Dict[str, int]:
    """``{c<i>: rows}``: ``rows`` each, or (``rows == 0``) Criteo's cardinalities capped at ``max_rows``."""
    return {
        f"c{i}": rows if rows > 0 else min(CRITEO_CARDINALITIES[i % len(CRITEO_CARDINALITIES)], max_rows)
        for i in range(tables)
    }


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


class IdealTBE(torch.nn.Module):
    """One plain FBGEMM TBE over the tier tables of ``provider`` (slot order, fused SGD), reading routed ids."""

    def __init__(self, provider: TieredEmbeddingProvider) -> None:
        super().__init__()
        tiers = [provider.plans[s.feature].tiers[s.tier] for s in provider.routing.slots]
        self.tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(t.num_rows, t.width, EmbeddingLocation.HOST, ComputeDevice.CPU) for t in tiers],
            optimizer=EmbOptimType.EXACT_SGD,
            learning_rate=LR,
            pooling_mode=PoolingMode.SUM,
            bounds_check_mode=BoundsCheckMode.NONE,
        )
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, routed: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.tbe(*routed) * self.scale

    @staticmethod
    def route(provider: TieredEmbeddingProvider, kjt: KeyedJaggedTensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The (indices, offsets) the tier collection reads for ``kjt``: ids remapped, grouped, one bag each."""
        rows = provider.remap(kjt.values(), kjt.length_per_key())
        features = provider.router(rows, kjt.lengths(), None, kjt.stride()).features
        return features.values().to(torch.int64), features.offsets().to(torch.int64)


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


def lookup_cost(kjt: KeyedJaggedTensor, plans: List[TablePlan], K: int) -> Tuple[int, int]:
    """``(bytes read, tier values read)`` by the lookups of ``kjt``: values, remap entries and per-row maps
    (tiered), or K * 4 bytes and K values per id."""
    if not plans:
        return kjt.values().numel() * K * 4, kjt.values().numel() * K
    total, values = 0, 0
    for p, (f, jt) in zip(plans, kjt.to_dict().items()):
        rows = p.global_rows()[jt.values()]
        cost = torch.zeros(p.kept_rows + 1, dtype=torch.int64)  # last entry: dropped id
        width = torch.zeros(p.kept_rows + 1, dtype=torch.int64)
        for j, t in enumerate(p.tiers):
            o = p.tier_offsets[j]
            cost[o : o + t.num_rows] = t.width * 4 + (0 if t.shared else t.width * t.column_map.element_size())
            width[o : o + t.num_rows] = t.width
        remap_entry = next(iter(p.remap.tensors().values())).element_size()
        total += int(cost[rows].sum()) + rows.numel() * remap_entry
        values += int(width[rows].sum())
    return total, values


def interleaved(steps: Dict[str, Callable[[int], None]], count: int, warmup: int) -> Dict[str, Tuple[float, float]]:
    """Median wall and process-CPU seconds per step of every ``steps[name](i)``, the names taking turns."""
    for i in range(warmup):
        for fn in steps.values():
            fn(i)
    wall: Dict[str, List[float]] = {k: [] for k in steps}
    cpu: Dict[str, List[float]] = {k: [] for k in steps}
    for i in range(warmup, warmup + count):
        for name, fn in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn(i)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in steps}


def step_fn(model: torch.nn.Module, inputs: list, backward: bool) -> Callable[[int], None]:
    def step(i: int) -> None:
        if backward:
            model(inputs[i]).square().mean().backward()
        else:
            with torch.no_grad():
                model(inputs[i])

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench-out/lookup_throughput.jsonl")
    ap.add_argument("--dims", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--rates", type=float, nargs="+", default=[2, 4, 8, 20])
    ap.add_argument("--patterns", nargs="+", default=["blocks", "elementwise"])
    ap.add_argument("--tables", type=int, default=26, help="number of tables (features)")
    ap.add_argument("--rows", type=int, default=0, help="rows per table (0: Criteo's, capped at --max-rows)")
    ap.add_argument("--max-rows", type=int, default=100_000)
    ap.add_argument("--max-tiers", type=int, default=4)
    ap.add_argument(
        "--widths", type=int, nargs="*", default=[], help="tier width palette (default: all multiples of 4)"
    )
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ctx = init_distributed("cpu")
    cfg = TrainConfig(sharding="table_wise", embedding_optimizer="sgd", embedding_lr=LR, device="cpu")
    sizes = table_sizes(args.tables, args.rows, args.max_rows)
    g = torch.Generator().manual_seed(args.seed)
    batches = id_batches(sizes, args.batch_size, args.warmup + args.steps, g)
    lookups = args.batch_size * len(sizes)
    measured = batches[args.warmup :]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    common = {
        "bench": "lookup_throughput",
        "batch_size": args.batch_size,
        "tables": len(sizes),
        "rows": sum(sizes.values()),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "host": platform.node(),
        "torch": torch.__version__,
        "world_size": ctx.world_size,
    }

    for K in args.dims:
        uniform = shard_model(Net(UniformEmbeddingProvider(sizes, K, device=torch.device("meta"))), cfg, ctx)
        uniform_bytes = sum(sizes.values()) * K * 4
        uniform_read = sum(lookup_cost(b, [], K)[0] for b in measured) / len(measured)
        for pattern in args.patterns:
            for rate in args.rates:
                t0 = time.perf_counter()
                planner = PlannerConfig(args.max_tiers, tuple(args.widths))
                plans = [
                    plan_table(make_mask(n, K, rate, pattern, g), table_name(f), f, planner) for f, n in sizes.items()
                ]
                plan_s = time.perf_counter() - t0
                provider = TieredEmbeddingProvider(plans, device=torch.device("meta"))
                tiered = shard_model(Net(provider), cfg, ctx)
                one_pass = {"fwd": provider.one_pass_available(), "fwd_bwd": provider.one_pass_training_available()}
                ideal = IdealTBE(provider)
                routed = [IdealTBE.route(provider, b) for b in batches]
                costs = [lookup_cost(b, plans, K) for b in measured]
                read = sum(c[0] for c in costs) / len(costs)
                width = sum(c[1] for c in costs) / len(costs) / lookups
                S = sum(int(r[1].numel() - 1) for r in routed) / len(routed) / len(provider.routing.slots)
                per_kind = {
                    k: sum(getattr(p.bytes(), k) for p in plans)
                    for k in ("values", "column_maps", "remap", "floor", "csr")
                }
                tier_info = {
                    "max_tiers": args.max_tiers,
                    "widths": args.widths,
                    "tiers": sum(len(p.tiers) for p in plans),
                    "per_row_tiers": sum(not t.shared for p in plans for t in p.tiers),
                    "buckets": provider.routing.num_buckets,
                    "width_groups": len(provider.routing.groups),
                    "mean_kept_dims": float(sum(int(p.kept_dims().sum()) for p in plans) / sum(sizes.values())),
                    "lookup_width": width,
                    "stride": S,
                    "pooled_columns": provider.routing.total_width,
                    "plan_s": plan_s,
                }
                for mode in ("fwd", "fwd_bwd"):
                    back = mode == "fwd_bwd"
                    # Under one harness for all three: the sharded models without their DDP wrapper, which with
                    # one process only copies the output (the ideal TBE has none).
                    times = interleaved(
                        {
                            "uniform": step_fn(uniform.module, batches, back),
                            "tiered": step_fn(tiered.module, batches, back),
                            "ideal": step_fn(ideal, routed, back),
                        },
                        args.steps,
                        args.warmup,
                    )
                    for kind, (sec, cpu) in times.items():
                        row = dict(common)
                        row.update(
                            provider=kind,
                            embedding_dim=K,
                            pattern=pattern,
                            rate=rate,
                            mode=mode,
                            step_ms=1000 * sec,
                            cpu_step_ms=1000 * cpu,
                            lookups_per_cpu_s=lookups / cpu,
                            vs_ideal=cpu / times["ideal"][1],
                            speedup_vs_uniform=times["uniform"][1] / cpu,
                            embedding_bytes=uniform_bytes if kind == "uniform" else provider.embedding_bytes(),
                            uniform_bytes=uniform_bytes,
                        )
                        if kind != "uniform":
                            row.update(tier_info, bytes_by_kind=per_kind)
                        if kind == "tiered":
                            row["lookup"] = (
                                {"fwd": "one_pass", "fwd_bwd": "one_pass_train"}[mode] if one_pass[mode] else "routed"
                            )
                        if kind != "ideal":
                            r = uniform_read if kind == "uniform" else read
                            row.update(effective_gb_per_s=r / sec / 1e9, effective_gb_per_cpu_s=r / cpu / 1e9)
                        print(
                            json.dumps(
                                {
                                    k: (round(v, 3) if isinstance(v, float) else v)
                                    for k, v in row.items()
                                    if k
                                    in (
                                        "provider",
                                        "embedding_dim",
                                        "pattern",
                                        "rate",
                                        "mode",
                                        "cpu_step_ms",
                                        "vs_ideal",
                                        "speedup_vs_uniform",
                                        "lookup_width",
                                        "stride",
                                        "lookup",
                                    )
                                }
                            ),
                            flush=True,
                        )
                        with open(args.out, "a") as fh:
                            fh.write(json.dumps(row) + "\n")
                del tiered, ideal, provider
        del uniform


if __name__ == "__main__":
    main()
