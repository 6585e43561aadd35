"""Each method against the uniform table at equal bytes: the UE frontier and paired-seed differences.

The UE frontier of one (arch, seed) is the curve bytes -> test metric drawn through that seed's uniform
cells (``ue`` at every budget and every ``ue@<d>``, ``ue@0`` included: the dense-only model at 0 bytes):

- the points are sorted by bytes and made monotone (the best metric of any UE point at or below those
  bytes: with more bytes a user can always keep a smaller uniform table), which favours UE, since the
  best point is picked on test;
- between two points the curve is interpolated linearly in log bytes (linearly in bytes on a segment
  that starts at 0 bytes); above the largest point it stays flat; below the smallest it is undefined.

A method's cell of seed s is compared with the frontier of seed s at that cell's stored bytes, and with a
reference method (magnitude pruning by default) at the same budget and seed. Over seeds, the difference's
mean and sample std are reported; a method "beats" a reference when the mean difference exceeds twice the
std (two seeds at least). Differences are signed so that positive is better (for MSE-like metrics the
sign is flipped).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

Point = Tuple[float, float]


def higher_is_better(metric: str) -> bool:
    """True for AUC-like metrics, False for losses and errors (``logloss``, ``mse``, ``rmse``)."""
    return metric.split(".")[-1] not in ("logloss", "mse", "rmse", "loss")


def is_uniform(method: str) -> bool:
    """``ue`` and ``ue@<d>``: the cells the frontier is drawn through."""
    return method == "ue" or method.startswith("ue@")


def envelope(points: Sequence[Point], higher: bool = True) -> List[Point]:
    """The monotone upper envelope of (bytes, metric) points: at each bytes, the best metric at or below it.

    Args:
        points: (bytes, metric) pairs, any order; repeated bytes keep the best metric.
        higher: True when a larger metric is better.

    Returns:
        (bytes, metric) sorted by bytes, each metric at least as good as every one before it.

    Example::

        envelope([(100.0, 0.70), (0.0, 0.56), (400.0, 0.69)])
        # [(0.0, 0.56), (100.0, 0.70), (400.0, 0.70)]
    """
    best = max if higher else min
    merged: Dict[float, float] = {}
    for b, m in points:
        merged[b] = best(merged[b], m) if b in merged else m
    out: List[Point] = []
    for b in sorted(merged):
        out.append((b, best(out[-1][1], merged[b]) if out else merged[b]))
    return out


def frontier_value(env: Sequence[Point], bytes_: float) -> Optional[float]:
    """The frontier's metric at ``bytes_`` (interpolated in log bytes), or None below its smallest point.

    Args:
        env: :func:`envelope` output.
        bytes_: the stored bytes to read the frontier at.
    """
    if not env or bytes_ < env[0][0]:
        return None
    if bytes_ >= env[-1][0]:
        return env[-1][1]
    for (b0, m0), (b1, m1) in zip(env, env[1:]):
        if b0 <= bytes_ <= b1:
            if b1 == b0:
                return m1
            if b0 > 0:
                t = (math.log(bytes_) - math.log(b0)) / (math.log(b1) - math.log(b0))
            else:
                t = (bytes_ - b0) / (b1 - b0)
            return m0 + t * (m1 - m0)
    return env[-1][1]  # not reached: the segments cover [env[0][0], env[-1][0]]


def _diff_stats(diffs: Sequence[float]) -> Dict[str, Any]:
    mean = statistics.fmean(diffs) if diffs else None
    std = statistics.stdev(diffs) if len(diffs) > 1 else None
    return {
        "mean": mean,
        "std": std,
        "n": len(diffs),
        "values": list(diffs),
        "beats": bool(mean is not None and std is not None and mean > 2.0 * std),
    }


def frontier_rows(
    cells: Sequence[Mapping[str, Any]],
    metric: str,
    reference: Optional[str] = "magnitude",
) -> List[Dict[str, Any]]:
    """Per (arch, budget, method) that is not UE: the paired differences against the UE frontier and a reference.

    Args:
        cells: one entry per finished cell, ``{"arch", "cr", "method", "seed", "values"}`` where ``values``
            holds at least ``bytes`` and ``metric`` (:func:`recdim.compare.report.cell_values`).
        metric: the quantity compared, e.g. ``test.auc``.
        reference: a method compared at the same (arch, budget, seed); None: none.

    Returns:
        Rows ``{"arch", "cr", "method", "n", "bytes", "metric", "frontier", "vs_frontier", "vs_reference",
        "reference", "missing"}``: ``bytes`` / ``metric`` / ``frontier`` are means over the paired seeds,
        ``vs_*`` are :func:`_diff_stats` dicts (positive = better than the reference), ``missing`` lists the
        seeds with no frontier at those bytes (no UE cell of that seed at or below them).

    Example::

        rows = frontier_rows(cells, "test.auc")
        rows[0]["vs_frontier"]   # {"mean": 0.006, "std": 0.001, "n": 3, "values": [...], "beats": True}
    """
    higher = higher_is_better(metric)
    sign = 1.0 if higher else -1.0
    usable = [c for c in cells if metric in c["values"] and "bytes" in c["values"]]
    fronts: Dict[Tuple[str, int], List[Point]] = {}
    for c in usable:
        if is_uniform(c["method"]):
            fronts.setdefault((c["arch"], c["seed"]), []).append((c["values"]["bytes"], c["values"][metric]))
    envs = {k: envelope(v, higher) for k, v in fronts.items()}
    by_key = {(c["arch"], float(c["cr"]), c["method"], c["seed"]): c for c in usable}
    groups: Dict[Tuple[str, float, str], List[Mapping[str, Any]]] = {}
    for c in usable:
        if not is_uniform(c["method"]):
            groups.setdefault((c["arch"], float(c["cr"]), c["method"]), []).append(c)
    rows = []
    for (arch, cr, method), members in groups.items():
        members = sorted(members, key=lambda c: c["seed"])
        front_d, ref_d, bytes_, vals, fronts_at, missing = [], [], [], [], [], []
        for c in members:
            v = c["values"]
            f = frontier_value(envs.get((arch, c["seed"]), []), v["bytes"])
            if f is None:
                missing.append(c["seed"])
            else:
                front_d.append(sign * (v[metric] - f))
                fronts_at.append(f)
                bytes_.append(v["bytes"])
                vals.append(v[metric])
            ref = by_key.get((arch, cr, reference, c["seed"])) if reference and method != reference else None
            if ref is not None:
                ref_d.append(sign * (v[metric] - ref["values"][metric]))
        rows.append(
            {
                "arch": arch,
                "cr": cr,
                "method": method,
                "n": len(members),
                "bytes": statistics.fmean(bytes_) if bytes_ else None,
                "metric": statistics.fmean(vals) if vals else None,
                "frontier": statistics.fmean(fronts_at) if fronts_at else None,
                "vs_frontier": _diff_stats(front_d),
                "reference": reference if ref_d else None,
                "vs_reference": _diff_stats(ref_d) if ref_d else None,
                "missing": missing,
            }
        )
    return sorted(rows, key=lambda r: (r["arch"], r["cr"], r["method"]))


def _fmt_diff(d: Optional[Mapping[str, Any]]) -> str:
    if not d or d["mean"] is None:
        return "—"
    text = f"{d['mean']:+.4f}" + (f" ± {d['std']:.4f}" if d["std"] is not None else "")
    return text + (" **>2σ**" if d["beats"] else "")


def render_frontier_markdown(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    """The frontier rows as a Markdown section (empty string when there are none)."""
    if not rows:
        return ""
    ref = next((r["reference"] for r in rows if r.get("reference")), None)
    lines = [
        "## Against the UE frontier at equal bytes",
        "",
        f"Paired over seeds: each cell's {metric} minus the same seed's UE frontier at the cell's stored bytes "
        "(UE cells made monotone, interpolated in log bytes)"
        + (f", and minus {ref} at the same budget and seed" if ref else "")
        + "; mean ± sample std of the difference, positive = better, **>2σ** = mean above twice the std.",
        "",
        f"| arch | method | CR | n | bytes | {metric} | UE frontier | Δ vs UE frontier | Δ vs {ref or 'reference'} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r["arch"],
            r["method"],
            f"{r['cr']:g}",
            str(r["n"]) + (f" (no frontier: seeds {r['missing']})" if r["missing"] else ""),
            f"{r['bytes']:,.0f}" if r["bytes"] is not None else "—",
            f"{r['metric']:.4f}" if r["metric"] is not None else "—",
            f"{r['frontier']:.4f}" if r["frontier"] is not None else "—",
            _fmt_diff(r["vs_frontier"]),
            _fmt_diff(r["vs_reference"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)
