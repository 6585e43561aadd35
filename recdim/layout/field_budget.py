"""Field allocation: split a kept-value budget over fields by their importance, then rank within each field.

One global ranking of ``|v|`` over all tables (:func:`~recdim.layout.masks.magnitude_masks`) lets a field's
share follow its table's scale, its vocabulary and its optimiser rather than its signal (docs/methods.md,
"Field allocation"). Here each field first gets a number of kept dims per row proportional to its
importance (a held-out loss measure, :mod:`recdim.search.field_importance`), capped at K, by water-filling:

    d_f = min(K, c · max(I_f, 0)),   c such that Σ_f N_f · d_f = kept values,

and then keeps its own ``round(N_f · d_f)`` largest entries (so within a field, the method's score still
decides which rows and columns stay). A field of non-positive importance keeps nothing unless the budget
exceeds what the others can hold.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping

import torch


def field_kept_counts(
    importance: Mapping[str, float], rows: Mapping[str, int], embedding_dim: int, keep: int
) -> Dict[str, int]:
    """Kept values per field: ``N_f · d_f`` with ``d_f`` proportional to importance, capped at K, exactly
    ``keep`` in all.

    Args:
        importance: ``{field: I_f}`` (any real; non-positive fields come last).
        rows: ``{field: N_f}``, the same fields.
        embedding_dim: K.
        keep: the total kept count, ``0 <= keep <= Σ N_f · K``.

    Returns:
        ``{field: kept count}``, each in ``[0, N_f · K]``, summing to ``keep``.

    Example::

        field_kept_counts({"a": 2.0, "b": 1.0, "c": -0.1}, {"a": 10, "b": 10, "c": 10}, 8, 60)
        # {"a": 40, "b": 20, "c": 0}: d = 4, 2, 0
    """
    if set(importance) != set(rows):
        raise ValueError(f"importance fields {sorted(importance)} differ from table fields {sorted(rows)}")
    cap = {f: int(rows[f]) * embedding_dim for f in rows}
    if not 0 <= keep <= sum(cap.values()):
        raise ValueError(f"cannot keep {keep} of {sum(cap.values())} values")
    weight = {f: max(float(importance[f]), 0.0) for f in rows}
    for f, w in weight.items():
        if not math.isfinite(w):
            raise ValueError(f"field {f!r}: importance {importance[f]} is not finite")
    positive = [f for f in rows if weight[f] > 0 and cap[f] > 0]
    share: Dict[str, float] = {f: 0.0 for f in rows}
    held = sum(cap[f] for f in positive)
    if keep >= held:
        # Every useful field is full; the rest goes to the others by rows (the same dims per row).
        rest = [f for f in rows if f not in positive and cap[f] > 0]
        extra = keep - held
        rest_cap = sum(cap[f] for f in rest)
        for f in positive:
            share[f] = float(cap[f])
        for f in rest:
            share[f] = extra * cap[f] / rest_cap if rest_cap else 0.0
    else:
        # Water-filling: sum_f min(cap_f, c * N_f * w_f) is continuous and non-decreasing in c.
        def filled(c: float) -> float:
            return sum(min(cap[f], c * rows[f] * weight[f]) for f in positive)

        lo, hi = 0.0, 1.0
        while filled(hi) < keep:
            hi *= 2.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if filled(mid) < keep else (lo, mid)
        for f in positive:
            share[f] = min(float(cap[f]), hi * rows[f] * weight[f])
    # Integers summing to keep: floors, then the largest remainders (ties in field order), within caps.
    counts = {f: min(cap[f], int(math.floor(share[f]))) for f in rows}
    short = keep - sum(counts.values())
    order = sorted(rows, key=lambda f: -(share[f] - math.floor(share[f])))
    i = 0
    while short > 0:
        f = order[i % len(order)]
        if counts[f] < cap[f]:
            counts[f] += 1
            short -= 1
        i += 1
    over = -short
    for f in sorted(rows, key=lambda f: share[f] - counts[f]):
        if over <= 0:
            break
        take = min(over, counts[f])
        counts[f] -= take
        over -= take
    return counts


def field_top_masks(scores: Mapping[str, torch.Tensor], counts: Mapping[str, int]) -> Dict[str, torch.Tensor]:
    """Each field keeps its ``counts[f]`` entries of largest score (ties by row-major position).

    Args:
        scores: ``{field: [N, K]}`` what is ranked within each field (any real, ``-inf`` included).
        counts: ``{field: kept count}`` (:func:`field_kept_counts`).

    Returns:
        ``{field: bool [N, K]}`` with exactly ``counts[f]`` entries set.

    Example::

        masks = field_top_masks(keys, field_kept_counts(imp, rows, 16, keep))
    """
    out: Dict[str, torch.Tensor] = {}
    for f, v in scores.items():
        flat = v.detach().reshape(-1)
        n = int(counts[f])
        if not 0 <= n <= flat.numel():
            raise ValueError(f"field {f!r}: cannot keep {n} of its {flat.numel()} values")
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        if n:
            mask[torch.sort(flat, descending=True, stable=True).indices[:n]] = True
        out[f] = mask.view(v.shape)
    return out


def field_magnitude_masks(values: Mapping[str, torch.Tensor], counts: Mapping[str, int]) -> Dict[str, torch.Tensor]:
    """:func:`field_top_masks` of ``|values|``: each field keeps its ``counts[f]`` largest magnitudes.

    Example::

        masks = field_magnitude_masks(eff, field_kept_counts(imp, rows, 16, keep))
    """
    return field_top_masks({f: v.detach().abs().float() for f, v in values.items()}, counts)
