"""Do the kept dimensions follow signal? Per-field kept dims against a planted teacher's true ranks.

A pruned model keeps, per field, some dims per row. Two summaries per field:

- ``row_mean``: kept entries / rows (every id counts once: large vocabularies of rare ids pull it down);
- ``freq_weighted``: kept dims averaged over occurrences (ids weighted by their train counts: what a lookup
  actually reads, the measure that matters for quality).

Against a synthetic dataset's planted ranks (:class:`~recdim.config.SyntheticConfig`: true rank ``r_f``,
strength ``s_f``, 0 = noise), :func:`signal_summary` reports Spearman correlations of each summary with
the true signal (rank times a nonzero strength; noise fields get 0) and with the cardinality, and whether every
noise field is among the fields with the fewest kept dims. With n noise fields, a noise field is among the
fewest when fewer than n fields keep strictly fewer dims than it: fields that keep the same dims tie (a noise
field at 0 dims beside a weak field also at 0 counts, whatever the fields' order); when every field keeps the
same dims (a uniform table) there is no count.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr


def field_dims(masks: Mapping[str, torch.Tensor], counts: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
    """Per field: rows, ``row_mean`` and ``freq_weighted`` kept dims.

    Args:
        masks: ``{field: [N, K] bool}``.
        counts: ``{field: [N]}`` train occurrences per id (a field without counts weighs rows equally).

    Example::

        field_dims({"a": torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)}, {"a": np.array([3, 1])})
        # {"a": {"rows": 2, "row_mean": 1.5, "freq_weighted": 1.75}}
    """
    out: Dict[str, Dict[str, float]] = {}
    for f, m in masks.items():
        kept = m.sum(dim=1).to(torch.float64).numpy()
        c = np.asarray(counts.get(f, np.ones(kept.size)), dtype=np.float64)
        if c.size != kept.size:
            raise ValueError(f"field {f!r}: {c.size} counts for {kept.size} mask rows")
        total = float(c.sum())
        out[f] = {
            "rows": int(kept.size),
            "row_mean": float(kept.mean()) if kept.size else 0.0,
            "freq_weighted": float((kept * c).sum() / total) if total > 0 else float(kept.mean() if kept.size else 0.0),
        }
    return out


def _spearman(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    rho = float(spearmanr(a, b).statistic)
    return None if math.isnan(rho) else rho


def signal_summary(
    dims: Mapping[str, Mapping[str, float]],
    fields: Sequence[str],
    ranks: Sequence[int],
    strengths: Sequence[float],
    cardinalities: Sequence[int],
) -> Dict[str, Any]:
    """Spearman of kept dims with the planted signal and with the cardinality, and where the noise fields sit.

    Args:
        dims: :func:`field_dims` output.
        fields: the dataset's categorical fields, in the generator's order (``ranks[i]`` is ``fields[i]``'s).
        ranks, strengths, cardinalities: the generator's, one per field.

    Returns:
        ``{"fields": [per-field rows], "<measure>": {"spearman_signal", "spearman_cardinality",
        "noise_among_fewest", "noise_fields"}}`` for ``row_mean`` and ``freq_weighted``.
    """
    if not (len(fields) == len(ranks) == len(strengths) == len(cardinalities)):
        raise ValueError("fields, ranks, strengths and cardinalities differ in length")
    present = [i for i, f in enumerate(fields) if f in dims]
    signal = [float(ranks[i]) if strengths[i] > 0 else 0.0 for i in present]
    card = [float(cardinalities[i]) for i in present]
    noise = [fields[i] for i in present if strengths[i] <= 0]
    rows: List[Dict[str, Any]] = [
        {
            "field": fields[i],
            "true_rank": int(ranks[i]),
            "strength": float(strengths[i]),
            "cardinality": int(cardinalities[i]),
            **{k: dims[fields[i]][k] for k in ("row_mean", "freq_weighted")},
        }
        for i in present
    ]
    out: Dict[str, Any] = {"fields": rows}
    for measure in ("row_mean", "freq_weighted"):
        kept = [dims[fields[i]][measure] for i in present]
        by_field = dict(zip((fields[i] for i in present), kept))
        fewest = {f for f, k in by_field.items() if sum(other < k for other in kept) < len(noise)}
        out[measure] = {
            "spearman_signal": _spearman(kept, signal),
            "spearman_cardinality": _spearman(kept, card),
            # every field keeping the same dims ranks nothing (a uniform table): no count
            "noise_among_fewest": sum(f in fewest for f in noise) if len(set(kept)) > 1 else None,
            "noise_fields": len(noise),
        }
    return out


def planted_signal(cfg: Any, dims: Optional[Mapping[str, Mapping[str, float]]]) -> Optional[Dict[str, Any]]:
    """:func:`signal_summary` of ``dims`` when ``cfg`` prepares synthetic data with a planted teacher, else None.

    Args:
        cfg: a :class:`~recdim.config.Config`.
        dims: :func:`field_dims` of the model's masks (None: nothing to summarise).
    """
    if not dims or getattr(cfg.prepare, "source", None) != "synthetic":
        return None
    syn = cfg.prepare.synthetic
    fields = [f"C{i + 1}" for i in range(len(syn.cardinalities))]
    if not any(f in dims for f in fields):
        return None
    return signal_summary(dims, fields, syn.ranks, syn.strengths, syn.cardinalities)


def render_signal_markdown(summary: Mapping[str, Any], title: str) -> str:
    """A per-field table (sorted by true signal) and the Spearman lines, as Markdown."""
    lines = [
        f"#### {title}",
        "",
        "| field | true rank | strength | cardinality | kept dims (row mean) | kept dims (freq.) |",
    ]
    lines.append("|---|---|---|---|---|---|")

    def order(r: Mapping[str, Any]) -> Any:  # strongest signal first, then C2 before C10
        digits = "".join(ch for ch in r["field"] if ch.isdigit())
        return (-(r["true_rank"] if r["strength"] > 0 else 0), len(digits), digits, r["field"])

    for r in sorted(summary["fields"], key=order):
        lines.append(
            f"| {r['field']} | {r['true_rank'] if r['strength'] > 0 else 'noise'} | {r['strength']:g} | "
            f"{r['cardinality']} | {r['row_mean']:.2f} | {r['freq_weighted']:.2f} |"
        )
    lines.append("")
    for measure in ("freq_weighted", "row_mean"):
        s = summary[measure]

        def fmt(v: Optional[float]) -> str:
            return "n/a" if v is None else f"{v:.2f}"

        noise = "n/a" if s["noise_among_fewest"] is None else str(s["noise_among_fewest"])
        lines.append(
            f"- {measure}: Spearman with true signal {fmt(s['spearman_signal'])}, with cardinality "
            f"{fmt(s['spearman_cardinality'])}; {noise} "
            f"of {s['noise_fields']} noise fields among "
            f"the {s['noise_fields']} fields with the fewest dims"
        )
    lines.append("")
    return "\n".join(lines)
