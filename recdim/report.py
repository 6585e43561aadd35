"""The pipeline's report: one row per model (uniform baseline, each retrained budget), Markdown + JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

from recdim.config import Config
from recdim.config_io import to_dict
from recdim.fsio import write_json
from recdim.layout.field_signal import planted_signal, render_signal_markdown


def _row(name: str, res: Dict[str, Any], uniform_bytes: int, uniform_params: int, time_s: float) -> Dict[str, Any]:
    return {
        "model": name,
        "test": res["test"],
        "val": res["val"],
        "params": res["params"],
        "bytes": res["bytes"],
        "cr_params": uniform_params / res["params"] if res["params"] else float("inf"),
        "cr_bytes": uniform_bytes / res["bytes"] if res["bytes"] else float("inf"),
        "time_s": time_s,
    }


def _opt(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def write_pipeline_report(
    out: Path,
    cfg: Config,
    uniform: Dict[str, Any],
    search: Dict[str, Any],
    retrained: Sequence[Dict[str, Any]],
    wall_s: float,
) -> Dict[str, Any]:
    """Writes ``report.json`` and ``report.md`` under ``out`` and returns the JSON.

    Compression rates are against the uniform model's embedding parameters and bytes: ``bytes`` as
    retraining holds them (tier values with padding, column maps and remaps), ``stored_bytes`` as the
    exported artifact stores them on disk (jagged values, masks and row bitmaps; the manifest's
    ``bytes.total``).
    """
    ub, up = uniform["bytes"], uniform["params"]
    rows: List[Dict[str, Any]] = [_row("uniform", uniform, ub, up, uniform["wall_time_s"])]
    rows[0].update(stored_bytes=ub, cr_stored=1.0)
    method = search["search"]["method"]
    for r in retrained:
        row = _row(f"{method} CR {r['prune']['cr']:.2f}", r, ub, up, r["retrain_time_s"])
        if r.get("export"):
            row["export"] = str(r["export"])
            stored = json.loads((Path(r["export"]) / "manifest.json").read_text())["bytes"]["total"]
            row.update(stored_bytes=stored, cr_stored=ub / stored if stored else float("inf"))
        signal = planted_signal(cfg, r.get("field_dims"))
        if signal is not None:
            row["signal"] = signal
        rows.append(row)
    report = {
        "method": method,
        "arch": cfg.model.arch,
        "embedding_dim": cfg.model.embedding_dim,
        "dataset": cfg.data_path,
        "search_time_s": search["wall_time_s"],
        "wall_time_s": wall_s,
        "rows": rows,
        "config": to_dict(cfg),
    }
    write_json(out / "report.json", report)
    metrics = list(uniform["test"])
    lines = [
        f"# recdim report: {method} on {cfg.model.arch} (K = {cfg.model.embedding_dim})",
        "",
        f"Data: `{cfg.data_path}`. Search took {search['wall_time_s']:.1f} s; the whole pipeline {wall_s:.1f} s.",
        "Metrics are on the test split, read once after model selection on validation.",
        "",
        "| model | "
        + " | ".join(f"test {m}" for m in metrics)
        + " | params | bytes | CR (params) | CR (bytes) | stored bytes | CR (stored) | time (s) |",
        "|---|" + "---|" * (len(metrics) + 7),
    ]
    for r in rows:
        vals = " | ".join(f"{r['test'][m]:.4f}" for m in metrics)
        lines.append(
            f"| {r['model']} | {vals} | {r['params']:,} | {r['bytes']:,} | {r['cr_params']:.2f} "
            f"| {r['cr_bytes']:.2f} | {_opt(r.get('stored_bytes'), ',')} | {_opt(r.get('cr_stored'), '.2f')} "
            f"| {r['time_s']:.1f} |"
        )
    exported = [(r["model"], r["export"]) for r in rows if r.get("export")]
    if exported:
        lines += ["", "Exported models (`recdim predict --model DIR`, `recdim inspect --model DIR`):", ""]
        lines += [f"- {name}: `{path}`" for name, path in exported]
    planted = [(r["model"], r["signal"]) for r in rows if r.get("signal")]
    if planted:
        lines += ["", "## Kept dims against the planted teacher", ""]
        lines += [render_signal_markdown(sig, name) for name, sig in planted]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return report
