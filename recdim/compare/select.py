"""Choosing between candidate runs (grid / random search) on validation only."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from recdim.config.compare import HIGHER_IS_BETTER, LOWER_IS_BETTER


def selection_metric(val: Mapping[str, float], select_metric: str = "") -> Tuple[str, bool]:
    """The validation metric that ranks candidates, and whether higher is better.

    Args:
        val: a run's validation metrics (``{"auc": ..., "logloss": ...}`` or ``{"mse": ..., "rmse": ...}``).
        select_metric: a metric name, or empty for ``auc`` when present, else ``mse``, else ``logloss``.

    Returns:
        ``(name, higher_is_better)``.

    Example::

        selection_metric({"auc": 0.78, "logloss": 0.45})   # ("auc", True)
    """
    if select_metric:
        name = select_metric
    else:
        name = next((m for m in ("auc", "mse", "logloss", "rmse") if m in val), "")
    if not name or name not in val:
        raise ValueError(f"validation metrics {sorted(val)} lack the selection metric {select_metric or 'auc/mse'!r}")
    if name not in HIGHER_IS_BETTER + LOWER_IS_BETTER:
        raise ValueError(f"no known direction for metric {name!r}")
    return name, name in HIGHER_IS_BETTER


def choose_best(results: Sequence[Mapping[str, Any]], select_metric: str = "") -> Tuple[int, str, bool]:
    """Index of the result best on validation (the first of equals; NaN never wins).

    Args:
        results: run results, each with a ``val`` metrics dict; test metrics are never read.
        select_metric: as :func:`selection_metric`.

    Returns:
        ``(index, metric, higher_is_better)``.
    """
    if not results:
        raise ValueError("no candidate results to choose from")
    metric, higher = selection_metric(results[0]["val"], select_metric)
    best, best_v = -1, math.nan
    for i, r in enumerate(results):
        v = float(r["val"].get(metric, math.nan))
        if math.isnan(v):
            continue
        if best < 0 or (v > best_v if higher else v < best_v):
            best, best_v = i, v
    if best < 0:
        raise ValueError(f"every candidate has a NaN validation {metric}")
    return best, metric, higher


def selection_record(
    names: Sequence[str], results: Sequence[Mapping[str, Any]], best: int, metric: str, higher: bool
) -> Dict[str, Any]:
    """What a cell's ``selection`` entry holds: the metric, the chosen run and every candidate's val."""
    cands: List[Dict[str, Any]] = [
        {
            "method": n,
            "val": dict(r.get("val", {})),
            "params": r.get("params"),
            "bytes": r.get("bytes"),
            "search_time_s": r.get("search_time_s", 0.0),
            "retrain_time_s": r.get("retrain_time_s", 0.0),
        }
        for n, r in zip(names, results)
    ]
    return {"metric": metric, "higher_is_better": higher, "chosen": names[best], "candidates": cands}
