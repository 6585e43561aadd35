"""Per-field dimensions from searched candidate weights under a parameter budget (AutoDim at a CR).

AutoDim's own choice is each field's highest-weighted candidate; that choice implies one compression
rate. To meet a budget, fields step down to smaller candidates one at a time, always taking the step
that gives up the least log-weight per parameter saved (a greedy answer to the multiple-choice knapsack
``max sum_f log p_f(d_f)  s.t.  sum_f N_f d_f <= budget``). A choice already within the budget is kept:
the search never grows a field past the dimension it preferred.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence


def dims_at_budget(
    rows: Mapping[str, int],
    candidates: Mapping[str, Sequence[int]],
    weights: Mapping[str, Sequence[float]],
    budget: int,
) -> Dict[str, int]:
    """The dimension of every field, meeting ``sum_f rows[f] * d_f <= budget``.

    Args:
        rows: ``{field: N_f}``.
        candidates: ``{field: candidate dimensions}`` (any order).
        weights: ``{field: architecture weight of each candidate}`` (same order, e.g. softmax(alpha)).
        budget: the most parameters the fields may keep.

    Returns:
        ``{field: dimension}``.

    Raises:
        ValueError: when even every field's smallest candidate exceeds the budget.

    Example::

        dims_at_budget({"a": 100, "b": 10}, {"a": [4, 8], "b": [4, 8]}, {"a": [0.2, 0.8], "b": [0.4, 0.6]}, 600)
        # {"a": 4, "b": 8}: a steps down (it loses less weight per saved parameter than b would)
    """
    options = {f: sorted(zip(candidates[f], weights[f])) for f in rows}
    pos = {f: max(range(len(o)), key=lambda j: (o[j][1], -j)) for f, o in options.items()}
    cost = sum(rows[f] * options[f][pos[f]][0] for f in rows)
    smallest = sum(rows[f] * options[f][0][0] for f in rows)
    if smallest > budget:
        raise ValueError(
            f"a budget of {budget:,} parameters is below AutoDim's smallest candidates ({smallest:,} parameters)"
        )

    def log(p: float) -> float:
        return math.log(max(p, 1e-30))

    while cost > budget:
        best, best_ratio = None, math.inf
        for f in rows:
            j = pos[f]
            if j == 0 or rows[f] == 0:
                continue
            (d, p), (d_down, p_down) = options[f][j], options[f][j - 1]
            ratio = (log(p) - log(p_down)) / (rows[f] * (d - d_down))
            if ratio < best_ratio:
                best, best_ratio = f, ratio
        assert best is not None  # smallest <= budget < cost: some field can step down
        cost -= rows[best] * (options[best][pos[best]][0] - options[best][pos[best] - 1][0])
        pos[best] -= 1
    return {f: int(options[f][pos[f]][0]) for f in rows}
