"""What an artifact holds, per table: rows kept and dropped, kept dims per row, bytes by kind, compression."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Union

import torch

from recdim.export.artifact import read_artifact


def summarize(path: Union[str, Path]) -> Dict[str, Any]:
    """A JSON-ready summary of the (verified) artifact at ``path``.

    Returns:
        ``{"path", "format_version", "values_dtype", "arch", "embedding_dim", "tables": [...], "bytes": {...}}``;
        each table: ``name``, ``feature``, ``rows``, ``kept_rows``, ``dropped_rows``, ``mask`` (``prefix`` or
        ``bits``), ``remap`` (the serving lookup's), ``tiers`` (name, width, rows, map kind),
        ``kept_dims_histogram`` (``{dims: rows}``, 0 = dropped), ``mean_kept_dims``, ``bytes`` (as stored:
        values, scales, mask, rows, tiers, total; the uniform / CSR / COO / floor costs of the same mask;
        ``training``, the tier layout the lookup holds; see :mod:`recdim.export.table_files`) and
        ``compression`` (uniform bytes / stored bytes).

    Example::

        s = summarize("out/model")
        print(format_summary(s))
    """
    art = read_artifact(path)
    tables: List[Dict[str, Any]] = []
    for plan, entry in zip(art.plans, art.manifest["tables"]):
        dims = plan.kept_dims()
        values, counts = torch.unique(dims, return_counts=True)
        b = dict(entry["bytes"])
        tables.append(
            {
                "name": plan.name,
                "feature": plan.feature,
                "rows": plan.num_embeddings,
                "kept_rows": plan.kept_rows,
                "dropped_rows": plan.dropped_rows,
                "mask": entry["mask"],
                "remap": plan.remap.kind,
                "tiers": [
                    {
                        "name": t.name,
                        "width": t.width,
                        "rows": t.num_rows,
                        "column_map": "shared" if t.shared else "per_row",
                    }
                    for t in plan.tiers
                ],
                "kept_dims_histogram": {int(v): int(c) for v, c in zip(values.tolist(), counts.tolist())},
                "mean_kept_dims": float(dims.float().mean()) if dims.numel() else 0.0,
                "bytes": b,
                "compression": b["uniform"] / b["total"] if b["total"] else float("inf"),
            }
        )
    totals: Dict[str, Any] = dict(art.manifest["bytes"])
    totals["compression"] = totals["uniform"] / totals["total"] if totals["total"] else float("inf")
    return {
        "path": str(art.path),
        "format_version": art.manifest["format_version"],
        "values_dtype": art.values_dtype,
        "arch": art.model.arch,
        "embedding_dim": art.model.embedding_dim,
        "features": art.features,
        "tables": tables,
        "bytes": totals,
    }


def _mb(n: int) -> str:
    return f"{n / 2**20:.3f}MiB" if n >= 2**20 else f"{n / 2**10:.1f}KiB"


def format_summary(summary: Dict[str, Any]) -> str:
    """Printable text of :func:`summarize`'s output."""
    lines = [
        f"artifact {summary['path']} (format v{summary['format_version']}, {summary['values_dtype']} values): "
        f"arch {summary['arch']}, K={summary['embedding_dim']}, {len(summary['tables'])} tables",
        f"{'table':<24}{'rows':>10}{'kept':>10}{'dropped':>9}{'tiers':>7}{'mean dim':>9}"
        f"{'values':>12}{'mask':>11}{'index':>11}{'total':>12}{'floor':>12}{'uniform':>12}{'rate':>7}",
    ]
    for t in summary["tables"]:
        b = t["bytes"]
        lines.append(
            f"{t['name']:<24}{t['rows']:>10}{t['kept_rows']:>10}{t['dropped_rows']:>9}{len(t['tiers']):>7}"
            f"{t['mean_kept_dims']:>9.2f}{_mb(b['values'] + b['scales']):>12}{_mb(b['mask']):>11}"
            f"{_mb(b['rows'] + b['tiers']):>11}{_mb(b['total']):>12}{_mb(b['floor']):>12}{_mb(b['uniform']):>12}"
            f"{t['compression']:>6.1f}x"
        )
        tiers = ", ".join(f"{x['width']}x{x['rows']}{'' if x['column_map'] == 'shared' else '*'}" for x in t["tiers"])
        hist = " ".join(f"{d}:{c}" for d, c in t["kept_dims_histogram"].items())
        lines.append(
            f"    {t['mask']} mask; serving tiers (width x rows, * = per-row maps; remap {t['remap']}, "
            f"{_mb(b['training'])}): {tiers or '-'}"
        )
        lines.append(f"    kept dims per row (dims:rows): {hist}")
    b = summary["bytes"]
    lines.append(
        f"total stored: {_mb(b['total'])} (values {_mb(b['values'] + b['scales'])}, mask {_mb(b['mask'])}, "
        f"row bitmap + tiers {_mb(b['rows'] + b['tiers'])}) vs uniform {_mb(b['uniform'])}: {b['compression']:.2f}x; "
        f"floor {_mb(b['floor'])}, CSR {_mb(b['csr'])}, COO {_mb(b['coo'])}; serving tiers {_mb(b['training'])}"
    )
    return "\n".join(lines)
