"""Row-sharing layouts at a budget: the hashing trick and quotient-remainder (QR) embeddings.

Both keep every stored row K wide and store fewer rows than a feature has ids:

- **hashing**: id i of feature f reads row ``i mod m_f`` of one ``[m_f, K]`` table;
- **QR** (Shi et al., "Compositional Embeddings Using Complementary Partitions for Memory-Efficient
  Recommendation Systems", KDD 2020): id i reads row ``i // m_f`` of a quotient table
  (``ceil(N_f / m_f)`` rows) and row ``i mod m_f`` of a remainder table (``m_f`` rows), combined elementwise
  (:mod:`recdim.modules.hashed_embedding`). The pair ``(i // m, i mod m)`` is unique per id, so no two ids
  share their whole embedding.

Budgets are compression rates as everywhere in recdim: CR = uniform parameters (sum N_f * K) / stored
parameters, the stored parameters at most ``budget_for_cr`` (K * rows). The rows of that budget are shared
out in proportion to N_f. A feature whose smallest layout needs more rows than its share (QR: about
``2 sqrt(N_f)``) takes that smallest layout and the other features share what is left; if the smallest
layouts of all features together exceed the budget by more than :data:`~recdim.layout.masks.CR_TOLERANCE`,
the budget is refused, naming the features and the highest reachable CR. A layout never reports a CR it
does not reach: :attr:`SharingPlan.cr` is computed from the rows it stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from recdim.layout.dims import BYTES_PER_VALUE, budget_for_cr
from recdim.layout.masks import CR_TOLERANCE

DIVISOR_BYTES = 8
"""Bytes of the one int64 divisor ``m_f`` a shared feature needs at lookup."""


class Sharing(str, Enum):
    """How a feature's ids reach its stored rows."""

    FULL = "full"
    """One row per id (no sharing): the feature is too small to gain from sharing."""
    HASH = "hash"
    """Row ``i mod m`` of one table."""
    QR = "qr"
    """Row ``i // m`` of a quotient table and row ``i mod m`` of a remainder table."""


@dataclass(frozen=True)
class SharedRows:
    """The row layout of one feature.

    Args:
        feature: the feature.
        num_embeddings: N, its number of ids.
        sharing: how ids map to rows.
        divisor: m: rows of the hash table, or of the QR remainder table; N for :attr:`Sharing.FULL`.

    Example::

        SharedRows("item", 1000, Sharing.QR, 5).rows       # 5 remainder + 200 quotient rows = 205
    """

    feature: str
    num_embeddings: int
    sharing: Sharing
    divisor: int

    def __post_init__(self) -> None:
        n, m = self.num_embeddings, self.divisor
        if n < 1:
            raise ValueError(f"{self.feature}: a feature needs at least one id, got N = {n}")
        if self.sharing == Sharing.FULL and m != n:
            raise ValueError(f"{self.feature}: a full table has divisor N = {n}, got {m}")
        if not 1 <= m <= n:
            raise ValueError(f"{self.feature}: divisor {m} must lie in [1, {n}]")

    @property
    def quotient_rows(self) -> int:
        """``ceil(N / m)``: rows of the QR quotient table (0 for the other layouts)."""
        return -(-self.num_embeddings // self.divisor) if self.sharing == Sharing.QR else 0

    @property
    def rows(self) -> int:
        """Stored rows over all of the feature's tables."""
        if self.sharing == Sharing.FULL:
            return self.num_embeddings
        return self.divisor + self.quotient_rows

    @property
    def shared(self) -> bool:
        return self.sharing != Sharing.FULL

    def to_json(self) -> Dict[str, Any]:
        return {
            "feature": self.feature,
            "num_embeddings": self.num_embeddings,
            "sharing": self.sharing.value,
            "divisor": self.divisor,
            "rows": self.rows,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SharedRows":
        return cls(str(data["feature"]), int(data["num_embeddings"]), Sharing(data["sharing"]), int(data["divisor"]))


@dataclass(frozen=True)
class SharingPlan:
    """Row layouts of every feature at one budget.

    Args:
        layouts: one per feature, in provider order.
        embedding_dim: K.
        target_cr: the compression rate asked for.

    Example::

        plan = qr_plan({"user": 944, "item": 1683}, 16, 4.0)
        plan.cr >= 4.0, plan.params, plan.summary()
    """

    layouts: Sequence[SharedRows]
    embedding_dim: int
    target_cr: float

    @property
    def method(self) -> str:
        kinds = {s.sharing for s in self.layouts} - {Sharing.FULL}
        return kinds.pop().value if len(kinds) == 1 else "shared"

    @property
    def uniform_params(self) -> int:
        """sum N_f * K."""
        return sum(s.num_embeddings for s in self.layouts) * self.embedding_dim

    @property
    def params(self) -> int:
        """Stored values: K per stored row."""
        return sum(s.rows for s in self.layouts) * self.embedding_dim

    @property
    def bytes(self) -> int:
        """float32 values plus one int64 divisor per shared feature."""
        return BYTES_PER_VALUE * self.params + DIVISOR_BYTES * sum(s.shared for s in self.layouts)

    @property
    def cr(self) -> float:
        """The compression rate reached: uniform / stored parameters."""
        return self.uniform_params / self.params

    def summary(self) -> Dict[str, Any]:
        """JSON-ready: method, target and reached CR, and per feature its layout."""
        return {
            "method": self.method,
            "target_cr": float(self.target_cr),
            "cr": self.cr,
            "params": self.params,
            "uniform_params": self.uniform_params,
            "layouts": [s.to_json() for s in self.layouts],
        }


def _qr_rows(n: int, m: int) -> int:
    return m + -(-n // m)


def _small_side(n: int) -> np.ndarray:
    """[n_options, 2] ``(rows, m)`` of the QR layouts of n ids with ``2 <= m <= isqrt(n - 1) + 1`` (where the
    row count falls as m grows) that store fewer rows than n, plus the full table ``(n, n)``."""
    m = np.arange(2, math.isqrt(max(n - 1, 0)) + 2, dtype=np.int64) if n > 2 else np.zeros(0, np.int64)
    rows = m + -(-n // np.maximum(m, 1))
    keep = rows < n
    return np.concatenate([np.stack([rows[keep], m[keep]], 1), np.array([[n, n]], dtype=np.int64)])


def _large_side(n: int, budget_rows: int) -> int:
    """The largest m in ``[isqrt(n - 1) + 1, n - 1]`` with ``m + ceil(n / m) <= budget_rows``, or 0. The row count
    does not fall as m grows there (``ceil(n / m)`` drops by at most one per step), so a binary search finds it."""
    lo, hi = math.isqrt(max(n - 1, 0)) + 1, n - 1
    if lo > hi or _qr_rows(n, lo) > budget_rows:
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _qr_rows(n, mid) <= budget_rows else (lo, mid - 1)
    return lo


def _best_qr(feature: str, n: int, budget_rows: int) -> SharedRows:
    """The QR layout of n ids that stores the most rows within ``budget_rows`` (ties: the smaller m), or, when
    none fits, the one with the fewest rows; a full table when that is no larger.

    Every m in ``[2, n - 1]`` is a layout: small m (the public DLRM code's "collisions": a small remainder
    table) gives coarse row counts ``about n / m``, large m (a small quotient table) every count from about
    ``2 sqrt(n)`` to n, so the budget is met to the row."""
    opts = _small_side(n)
    m_large = _large_side(n, budget_rows)
    if m_large:
        opts = np.concatenate([opts, np.array([[_qr_rows(n, m_large), m_large]], dtype=np.int64)])
    fits = opts[opts[:, 0] <= budget_rows]
    if len(fits):
        rows, m = fits[np.lexsort((fits[:, 1], -fits[:, 0]))[0]]
    else:
        rows, m = opts[np.lexsort((opts[:, 1], opts[:, 0]))[0]]
    if rows >= n:
        return SharedRows(feature, n, Sharing.FULL, n)
    return SharedRows(feature, n, Sharing.QR, int(m))


def _check_reached(plan: SharingPlan, over: List[str], smallest_rows: int) -> SharingPlan:
    if plan.cr >= plan.target_cr * (1 - CR_TOLERANCE):
        return plan
    reachable = plan.uniform_params / (smallest_rows * plan.embedding_dim)
    raise ValueError(
        f"{plan.method}: CR {plan.target_cr:g} is out of reach (the layout reaches {plan.cr:.3f}); the smallest "
        f"layouts of {over or [s.feature for s in plan.layouts]} already exceed their share of the budget; "
        f"the highest reachable CR is {reachable:.3f}"
    )


def _row_budget(num_embeddings: Mapping[str, int], embedding_dim: int, cr: float) -> int:
    if embedding_dim < 1:
        raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
    if not num_embeddings:
        raise ValueError("a sharing plan needs at least one feature")
    return budget_for_cr(num_embeddings, embedding_dim, cr) // embedding_dim


def hash_plan(num_embeddings: Mapping[str, int], embedding_dim: int, cr: float) -> SharingPlan:
    """The hashing trick at compression rate ``cr``: feature f keeps ``m_f = ceil(N_f / cr)`` rows (at least 1),
    then, while the total exceeds the budget, the feature whose rounding gained most gives one row back.
    A feature left with ``m_f = N_f`` keeps its full table.

    Args:
        num_embeddings: ``{feature: N}`` in provider order.
        embedding_dim: K.
        cr: target compression rate (>= 1).

    Returns:
        SharingPlan: ``params <= budget_for_cr(num_embeddings, K, cr)``.

    Raises:
        ValueError: when even one row per feature exceeds the budget by more than ``CR_TOLERANCE``
            (names the features and the reachable CR).

    Example::

        hash_plan({"user": 944, "item": 1683}, 16, 4.0).layouts[1].divisor     # 420
    """
    budget = _row_budget(num_embeddings, embedding_dim, cr)
    names = list(num_embeddings)
    n = np.array([int(num_embeddings[f]) for f in names], dtype=np.int64)
    share = n / cr
    m = np.clip(np.ceil(share - 1e-9).astype(np.int64), 1, n)
    excess = int(m.sum()) - budget
    if excess > 0:
        gained = m - share
        order = [i for i in np.argsort(-gained, kind="stable") if m[i] > 1]
        for i in order[:excess]:
            m[i] -= 1
    layouts = [
        SharedRows(f, int(nf), Sharing.FULL if mf == nf else Sharing.HASH, int(mf)) for f, nf, mf in zip(names, n, m)
    ]
    plan = SharingPlan(tuple(layouts), embedding_dim, cr)
    return _check_reached(plan, [f for f, mf, s in zip(names, m, share) if mf > s], len(names))


def qr_plan(num_embeddings: Mapping[str, int], embedding_dim: int, cr: float) -> SharingPlan:
    """Quotient-remainder layouts at compression rate ``cr``.

    Each feature's share of the row budget is ``floor(N_f * R / sum N)`` (R: the rows left to the features
    not yet placed); it takes the QR layout with the most rows ``m_f + ceil(N_f / m_f)`` within its share
    (any m_f in ``[2, N_f - 1]``; near the budget that is a large remainder table and a quotient table of
    about ``cr`` rows). A feature whose smallest layout (``m_f`` near ``sqrt(N_f)``, or its full table when
    that is smaller) does not fit its share takes that smallest layout, and the shares of the others are
    computed again from what is left.

    Args:
        num_embeddings: ``{feature: N}`` in provider order.
        embedding_dim: K.
        cr: target compression rate (>= 1).

    Returns:
        SharingPlan: within ``budget_for_cr`` unless the budget is out of reach by at most ``CR_TOLERANCE``.

    Raises:
        ValueError: the smallest layouts exceed the budget by more than ``CR_TOLERANCE`` (names the
            features that exceed their share and the highest reachable CR).

    Example::

        plan = qr_plan({"user": 944, "item": 1683}, 16, 4.0)
        [(s.divisor, s.quotient_rows) for s in plan.layouts]     # [(230, 5), (415, 5)]
    """
    budget = _row_budget(num_embeddings, embedding_dim, cr)
    names = list(num_embeddings)
    n = {f: int(num_embeddings[f]) for f in names}
    smallest = {f: _best_qr(f, n[f], 0) for f in names}
    fixed: Dict[str, SharedRows] = {}
    while True:
        rest = [f for f in names if f not in fixed]
        left = budget - sum(s.rows for s in fixed.values())
        total = sum(n[f] for f in rest)
        chosen = {f: _best_qr(f, n[f], n[f] * left // total if left > 0 else 0) for f in rest}
        over = [f for f in rest if chosen[f].rows > (n[f] * left // total if left > 0 else 0)]
        if not over:
            break
        fixed.update({f: smallest[f] for f in over})
        if len(fixed) == len(names):
            chosen = {}
            break
    layouts = {**fixed, **chosen}
    plan = SharingPlan(tuple(layouts[f] for f in names), embedding_dim, cr)
    return _check_reached(plan, sorted(fixed, key=names.index), sum(s.rows for s in smallest.values()))
