"""The comparison report: mean ± std over seeds per (method, arch, budget), as Markdown, JSON and a plot.

Reads every ``runs/**/cell.json`` under a comparison directory (whatever grid wrote them) and every
``failed.json`` without a finished cell beside it. Quantities per cell: the test and validation metrics
(AUC and logloss, or MSE and RMSE), embedding ``params`` and ``bytes`` as stored, the CR of the kept
entries (the result's ``kept_cr``, or its ``cr`` when it also reports ``target_cr``) and the CR as stored
(uniform parameters / stored params: tier padding and projections count), search and retrain time.
The plot draws the test metric against bytes, one line per method and one panel per arch (as PEP's
Figures 2-4). Every other method is set against the UE frontier at equal bytes and against magnitude
pruning, paired per seed (:mod:`recdim.compare.frontier`).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from recdim.compare.frontier import frontier_rows, render_frontier_markdown

PRIMARY = ("auc", "mse", "logloss", "rmse")
METRIC_ORDER = ("auc", "logloss", "mse", "rmse")


def load_records(out_dir: Union[str, Path]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Finished cell records and failures (``failed.json`` with no ``cell.json`` beside it), by path."""
    runs = Path(out_dir) / "runs"
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("**/cell.json"))]
    failures = [
        json.loads(p.read_text()) for p in sorted(runs.glob("**/failed.json")) if not (p.parent / "cell.json").exists()
    ]
    return records, failures


def cell_values(record: Mapping[str, Any]) -> Dict[str, float]:
    """The flat quantities of one cell: ``test.<m>``, ``val.<m>``, params, bytes, ``cr_kept``, ``cr_stored``,
    ``search_time_s``, ``retrain_time_s``."""
    r = record["result"]
    out: Dict[str, float] = {}
    for split in ("test", "val"):
        for k, v in (r.get(split) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{split}.{k}"] = float(v)
    for k in ("params", "bytes", "search_time_s", "retrain_time_s"):
        if isinstance(r.get(k), (int, float)):
            out[k] = float(r[k])
    uniform = record.get("uniform_params") or r.get("uniform_params")
    if uniform and r.get("params"):
        out["cr_stored"] = float(uniform) / float(r["params"])
    for measure in ("freq_weighted", "row_mean"):
        sig = (r.get("signal") or {}).get(measure) or {}
        for key, name in (("spearman_signal", "rank"), ("spearman_cardinality", "cardinality")):
            if isinstance(sig.get(key), (int, float)):
                out[f"signal.{measure}.{name}"] = float(sig[key])
        if sig.get("noise_fields") and sig.get("noise_among_fewest") is not None:
            out[f"signal.{measure}.noise_fewest"] = float(sig["noise_among_fewest"])
    kept = r.get("kept_cr", r.get("cr") if "target_cr" in r else None)
    if isinstance(kept, (int, float)):
        out["cr_kept"] = float(kept)
    return out


def mean_std(values: Sequence[float]) -> Dict[str, Any]:
    """``{"mean", "std", "n", "values"}`` over the finite values; std is the sample standard deviation
    (None for one value); ``nonfinite`` counts NaN / inf values left out (a diverged run stays visible)."""
    vals = [float(v) for v in values if math.isfinite(float(v))]
    return {
        "nonfinite": len(values) - len(vals),
        "mean": statistics.fmean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
        "n": len(vals),
        "values": vals,
    }


def _order(items: Sequence[str], preferred: Sequence[str]) -> List[str]:
    first = [m for m in preferred if m in items]
    return first + sorted(m for m in set(items) if m not in first)


def aggregate(
    records: Sequence[Mapping[str, Any]],
    method_order: Sequence[str] = (),
    arch_order: Sequence[str] = (),
) -> List[Dict[str, Any]]:
    """One row per (arch, budget, method) with mean ± std over its seeds.

    Args:
        records: cell records (``cell.json`` contents).
        method_order: methods first in this order, then the rest alphabetically.
        arch_order: arches likewise.

    Returns:
        Rows ``{"arch", "cr", "method", "seeds", "n", "stats": {quantity: mean_std}, "chosen", "tuned"}``
        sorted by arch, budget, method; ``chosen`` lists grid / random's chosen candidate per seed and
        ``tuned`` the ``compare.tune`` setting chosen per seed (else empty).

    Example::

        rows = aggregate(load_records("runs/compare")[0])
        rows[0]["stats"]["test.auc"]      # {"mean": 0.781, "std": 0.002, "n": 3, "values": [...]}
    """
    groups: Dict[Tuple[str, float, str], List[Mapping[str, Any]]] = {}
    for rec in records:
        c = rec["cell"]
        groups.setdefault((c["arch"], float(c["cr"]), c["method"]), []).append(rec)
    arches = _order([k[0] for k in groups], arch_order)
    methods = _order([k[2] for k in groups], method_order)
    rows = []
    for key in sorted(groups, key=lambda k: (arches.index(k[0]), k[1], methods.index(k[2]))):
        recs = sorted(groups[key], key=lambda r: r["cell"]["seed"])
        values = [cell_values(r) for r in recs]
        names = sorted({k for v in values for k in v})
        rows.append(
            {
                "arch": key[0],
                "cr": key[1],
                "method": key[2],
                "seeds": [r["cell"]["seed"] for r in recs],
                "n": len(recs),
                "stats": {k: mean_std([v[k] for v in values if k in v]) for k in names},
                "chosen": [r["selection"]["chosen"] for r in recs if r.get("selection")],
                "tuned": [r["tuning"]["chosen"] for r in recs if r.get("tuning")],
            }
        )
    return rows


def primary_metric(rows: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """``test.auc`` when present, else ``test.mse``, ``test.logloss``, ``test.rmse``, else None."""
    present = {k for r in rows for k in r["stats"]}
    return next((f"test.{m}" for m in PRIMARY if f"test.{m}" in present), None)


def _fmt(stat: Optional[Mapping[str, Any]], kind: str) -> str:
    if not stat or stat["mean"] is None:
        return "—"
    m, s = stat["mean"], stat["std"]
    if kind == "int":
        text = f"{m:,.0f}"
        return text if not s else f"{text} ± {s:,.0f}"
    digits = {"metric": 4, "corr": 2, "cr": 2, "time": 1}[kind]
    text = f"{m:.{digits}f}"
    return text if s is None else f"{text} ± {s:.{digits}f}"


def frontier_cells(records: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The cells as :func:`recdim.compare.frontier.frontier_rows` reads them: arch, cr, method, seed, values."""
    return [
        {
            "arch": r["cell"]["arch"],
            "cr": float(r["cell"]["cr"]),
            "method": r["cell"]["method"],
            "seed": r["cell"]["seed"],
            "values": cell_values(r),
        }
        for r in records
    ]


def render_markdown(
    rows: Sequence[Mapping[str, Any]],
    failures: Sequence[Mapping[str, Any]] = (),
    plot_name: Optional[str] = None,
    frontier: str = "",
) -> str:
    """The report as Markdown: one table per arch (rows: budget x method), the frontier section
    (:func:`recdim.compare.frontier.render_frontier_markdown`) when given, failures listed at the end."""
    lines = [
        "# recdim compare",
        "",
        "Mean ± sample std over seeds (n). CR is the target compression rate (uniform / kept "
        "parameters); test metrics are those of the run selected on validation; params and bytes as "
        "stored (tier padding and MDE projections included); CR kept = uniform / kept entries, "
        "CR stored = uniform / stored params; times in seconds (grid / random: search time = all "
        "candidates).",
        "",
    ]
    if plot_name:
        lines += [f"![test metric vs bytes]({plot_name})", ""]
    for arch in dict.fromkeys(r["arch"] for r in rows):
        sub = [r for r in rows if r["arch"] == arch]
        present = {k for r in sub for k in r["stats"]}
        metrics = [f"test.{m}" for m in METRIC_ORDER if f"test.{m}" in present]
        metrics += sorted(k for k in present if k.startswith("test.") and k not in metrics)
        val = primary_metric(sub)
        val = val.replace("test.", "val.") if val and val.replace("test.", "val.") in present else None
        cols = [
            "method",
            "CR",
            "n",
            *(m.replace(".", " ") for m in metrics + ([val] if val else [])),
            "params",
            "bytes",
            "CR kept",
            "CR stored",
            "search s",
            "retrain s",
        ]
        chosen = any(r["chosen"] for r in sub)
        if chosen:
            cols.append("chosen")
        tuned = any(r.get("tuned") for r in sub)
        if tuned:
            cols.append("tuned (per seed)")
        lines += [f"## {arch}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in sub:
            st = r["stats"]
            cells = [r["method"], f"{r['cr']:g}", str(r["n"])]
            cells += [_fmt(st.get(m), "metric") for m in metrics + ([val] if val else [])]
            cells += [
                _fmt(st.get("params"), "int"),
                _fmt(st.get("bytes"), "int"),
                _fmt(st.get("cr_kept"), "cr"),
                _fmt(st.get("cr_stored"), "cr"),
                _fmt(st.get("search_time_s"), "time"),
                _fmt(st.get("retrain_time_s"), "time"),
            ]
            if chosen:
                cells.append(", ".join(r["chosen"]) or "—")
            if tuned:
                cells.append("; ".join(r.get("tuned", [])) or "—")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    signal_rows = [r for r in rows if any(k.startswith("signal.") for k in r["stats"])]
    if signal_rows:
        lines += [
            "## Kept dims against the planted signal",
            "",
            "Spearman of each field's kept dims with its true rank (noise fields 0) and with its cardinality, "
            "frequency-weighted (dims averaged over occurrences) and row mean; noise = noise fields among the "
            "fields with the fewest dims (of all noise fields).",
            "",
            "| arch | method | CR | n | ρ rank (freq.) | ρ card. (freq.) | noise (freq.) | ρ rank (row) | "
            "ρ card. (row) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in signal_rows:
            st = r["stats"]
            cells = [r["arch"], r["method"], f"{r['cr']:g}", str(r["n"])]
            for key in (
                "signal.freq_weighted.rank",
                "signal.freq_weighted.cardinality",
                "signal.freq_weighted.noise_fewest",
                "signal.row_mean.rank",
                "signal.row_mean.cardinality",
            ):
                cells.append(_fmt(st.get(key), "corr"))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if frontier:
        lines += [frontier]
    if failures:
        lines += ["## Failed cells", ""]
        for f in failures:
            c = f["cell"]
            lines.append(f"- {c['method']} {c['arch']} cr={c['cr']:g} seed={c['seed']}: {f['error']}")
        lines.append("")
    return "\n".join(lines)


def plot_metric_vs_bytes(rows: Sequence[Mapping[str, Any]], path: Union[str, Path]) -> Optional[Path]:
    """Test metric against bytes (log scale), one line per method with ± std bars, one panel per arch.

    Returns:
        The PNG path, or None when no row has both a test metric and bytes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arches = list(dict.fromkeys(r["arch"] for r in rows))
    panels = []
    for arch in arches:
        sub = [r for r in rows if r["arch"] == arch]
        metric = primary_metric(sub)
        if metric and any("bytes" in r["stats"] and metric in r["stats"] for r in sub):
            panels.append((arch, metric, sub))
    if not panels:
        return None
    fig = Figure(figsize=(4.8 * len(panels), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (arch, metric, sub) in zip(axes, panels):
        for method in dict.fromkeys(r["method"] for r in sub):
            pts = sorted(
                (r["stats"]["bytes"]["mean"], r["stats"][metric]["mean"], r["stats"][metric]["std"] or 0.0)
                for r in sub
                if r["method"] == method and "bytes" in r["stats"] and metric in r["stats"]
            )
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("embedding bytes (as stored)")
        ax.set_ylabel(f"{metric} ({'higher' if metric.endswith(('auc', 'accuracy')) else 'lower'} is better)")
        ax.set_title(arch)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def write_compare_report(
    out_dir: Union[str, Path], method_order: Sequence[str] = (), arch_order: Sequence[str] = ()
) -> Dict[str, Path]:
    """Writes ``compare.json``, ``compare.md`` and ``compare.png`` into ``out_dir``.

    Args:
        out_dir: the comparison directory (its ``runs/`` are read).
        method_order: order of methods in tables and legends.
        arch_order: order of arches.

    Returns:
        ``{"json": ..., "markdown": ..., "plot": ...}`` (no ``plot`` when nothing can be drawn).

    Example::

        paths = write_compare_report("runs/compare", method_order=("ue", "mde", "dnis"))
    """
    from recdim.fsio import write_json

    out = Path(out_dir)
    records, failures = load_records(out)
    rows = aggregate(records, method_order, arch_order)
    paths: Dict[str, Path] = {}
    plot = plot_metric_vs_bytes(rows, out / "compare.png") if rows else None
    if plot is not None:
        paths["plot"] = plot
    primary = {a: primary_metric([r for r in rows if r["arch"] == a]) for a in dict.fromkeys(r["arch"] for r in rows)}
    cells = frontier_cells(records)
    fronts: List[Dict[str, Any]] = []
    sections = []
    for metric in dict.fromkeys(m for m in primary.values() if m):
        arches = {a for a, m in primary.items() if m == metric}
        part = frontier_rows([c for c in cells if c["arch"] in arches], metric)
        fronts += [{**r, "metric_name": metric} for r in part]
        sections.append(render_frontier_markdown(part, metric))
    paths["json"] = write_json(
        out / "compare.json",
        {
            "rows": rows,
            "frontier": fronts,
            "primary_metric": primary,
            "failures": [{"cell": f["cell"], "error": f["error"]} for f in failures],
        },
    )
    md = out / "compare.md"
    md.write_text(render_markdown(rows, failures, plot.name if plot is not None else None, "\n".join(sections)))
    paths["markdown"] = md
    return paths
