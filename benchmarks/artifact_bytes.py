"""Bytes on disk of exported artifacts against the floor, CSR and the uniform table, per CR, mask pattern and dtype.

Synthetic tables (``--tables`` x ``--rows``, K in ``--dims``), each pruned with the frequency-dependent
kept-dims profile of ``lookup_throughput.py`` (row i keeps about ``c * (i + 1) ** -0.3`` columns, 0 in the
far tail, c set so the mean is K / CR) in one of two patterns:

- ``elementwise`` (DNIS-like): every row keeps its own random columns;
- ``block``: 8 frequency blocks (geometric sizes, frequent ids first), each keeping one prefix of columns.

Each (K, CR, pattern) is planned (the default planner), exported with random values through
:func:`recdim.export.artifact.write_artifact` once per dtype, read back and verified. One JSON row per
exported artifact::

    {"bench": "artifact_bytes", "embedding_dim": 16, "cr": 4, "pattern": "elementwise", "dtype": "float32",
     "disk_bytes": ..., "floor_bytes": ..., "csr_bytes": ..., "uniform_bytes": ..., "training_bytes": ...,
     "artifact_bytes": ..., "nnz": ..., "disk_over_floor": ..., "disk_over_csr": ..., "disk_over_float32": ...}

Definitions, summed over tables (N rows, K columns, nnz kept entries each):

- ``disk_bytes``: the size on disk of the table files (``tables/*.safetensors``, safetensors headers
  included): everything the artifact stores for the embeddings;
- ``floor_bytes``: ``nnz * 4 + ceil(N * K / 8)``: every kept value as float32 plus one bit per (row, column)
  slot saying whether it is kept;
- ``csr_bytes``: ``nnz * 4 + nnz * c + (N + 1) * 4``: float32 values, a column index per value of c bytes
  (int8 for K <= 128, else int16) and int32 row pointers;
- ``uniform_bytes``: ``N * K * 4``, the unpruned table;
- ``training_bytes``: the tier tables, column maps and remap the training lookup holds (widths padded to
  multiples of 4);
- ``artifact_bytes``: the whole artifact directory (manifest, arch, tables);
- ``disk_over_float32``: this row's ``disk_bytes`` over the float32 artifact's of the same (K, CR, pattern).

``--quick`` runs 2 tables x 20,000 rows at K = 16 (under a minute).

Example::

    python benchmarks/artifact_bytes.py --out bench-out/artifact_bytes.jsonl
    python benchmarks/artifact_bytes.py --quick --out /tmp/bytes.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

from recdim.config import ModelConfig
from recdim.data.schema import FieldKind, FieldSpec, LabelKind, Schema
from recdim.export.artifact import read_artifact, write_artifact
from recdim.layout.tier_values import tier_values
from recdim.prune.planner import plan_tables

DTYPES = ("float32", "float16", "int8")


def kept_dims(n: int, K: int, rate: float) -> torch.Tensor:
    """[n] frequency-dependent kept dims with mean about K / rate (``lookup_throughput.py``'s profile)."""
    base = (torch.arange(n, dtype=torch.float64) + 1) ** -0.3
    lo, hi = 0.0, 1e6
    for _ in range(60):
        c = (lo + hi) / 2
        mean = (c * base).floor().clamp(max=K).mean()
        lo, hi = (c, hi) if mean < K / rate else (lo, c)
    return (hi * base).floor().clamp(max=K).long()


def make_mask(n: int, K: int, rate: float, pattern: str, g: torch.Generator) -> torch.Tensor:
    """[n, K] bool mask of one table at CR ``rate`` in ``pattern`` (module docstring)."""
    dims = kept_dims(n, K, rate)
    if pattern == "block":
        edges = torch.unique(torch.cat([torch.zeros(1), (n ** (torch.arange(1, 8) / 8.0)).floor()]).long())
        block = torch.searchsorted(edges, torch.arange(n), right=True) - 1
        means = torch.bincount(block, weights=dims.double()) / torch.bincount(block).double()
        return torch.arange(K) < means.round().long()[block].unsqueeze(1)
    if pattern == "elementwise":
        order = torch.rand(n, K, generator=g).argsort(dim=1)
        return order < dims.unsqueeze(1)
    raise ValueError(f"unknown pattern {pattern!r}")


def run_case(K: int, cr: float, pattern: str, tables: int, rows: int, seed: int, work: Path) -> List[Dict]:
    """Rows of one (K, CR, pattern): one per dtype."""
    g = torch.Generator().manual_seed(seed)
    features = [f"f{i}" for i in range(tables)]
    masks = {f: make_mask(rows, K, cr, pattern, g) for f in features}
    plans = plan_tables(masks)
    values = {p.name: tier_values(p, torch.randn(rows, K, generator=g)) for p in plans}
    schema = Schema(
        fields=tuple(FieldSpec(f, FieldKind.CATEGORICAL, rows, rows - 1) for f in features),
        label=LabelKind.BINARY,
    )
    model = ModelConfig(arch="fm", embedding_dim=K)
    out, fp32 = [], None
    for dtype in DTYPES:
        path = work / f"k{K}-cr{cr:g}-{pattern}-{dtype}"
        t0 = time.perf_counter()
        manifest = write_artifact(path, plans, values, {}, model, schema, values_dtype=dtype)
        t1 = time.perf_counter()
        read_artifact(path)
        t2 = time.perf_counter()
        b = manifest["bytes"]
        disk = sum((path / t["file"]).stat().st_size for t in manifest["tables"])
        fp32 = disk if dtype == "float32" else fp32
        out.append(
            {
                "bench": "artifact_bytes",
                "embedding_dim": K,
                "tables": tables,
                "rows": rows,
                "cr": cr,
                "pattern": pattern,
                "dtype": dtype,
                "disk_bytes": disk,
                "floor_bytes": b["floor"],
                "csr_bytes": b["csr"],
                "uniform_bytes": b["uniform"],
                "training_bytes": b["training"],
                "artifact_bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
                "nnz": b["nnz"],
                "cr_met": b["uniform"] / 4 / b["nnz"],
                "disk_over_floor": disk / b["floor"],
                "disk_over_csr": disk / b["csr"],
                "disk_over_float32": disk / fp32,
                "write_s": t1 - t0,
                "read_s": t2 - t1,
                "host": platform.node(),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--crs", type=float, nargs="+", default=[2.0, 4.0, 8.0, 20.0])
    ap.add_argument("--patterns", nargs="+", default=["elementwise", "block"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 tables x 20,000 rows at K = 16 (under a minute)")
    ap.add_argument("--out", default=None, help="append JSON rows to this file (default: stdout only)")
    args = ap.parse_args()
    if args.quick:
        args.tables, args.rows, args.dims = 2, 20_000, [16]
    sink = open(args.out, "a") if args.out else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for K in args.dims:
                for cr in args.crs:
                    for pattern in args.patterns:
                        for row in run_case(K, cr, pattern, args.tables, args.rows, args.seed, Path(tmp)):
                            line = json.dumps(row)
                            print(line, flush=True)
                            if sink:
                                sink.write(line + "\n")
                                sink.flush()
                        for p in Path(tmp).iterdir():  # keep the scratch space to one case
                            for f in sorted(p.rglob("*"), reverse=True):
                                f.unlink() if f.is_file() else f.rmdir()
                            p.rmdir()
    finally:
        if sink:
            sink.close()


if __name__ == "__main__":
    main()
