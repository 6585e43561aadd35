"""Scaling a dimension shape to a parameter budget: the exact search on lambda shared by MDE and random search.

Given a positive weight w_s per segment (MDE: p_s ** alpha; random search: a sampled shape), the
dimensions at scale lambda are ``d_s(lambda) = clip(round(lambda * w_s), min_dim, K)`` with a
:class:`Rounding` onto FBGEMM widths. Each d_s is a non-decreasing step function of lambda, so the
assignments are ordered: a larger lambda gives every segment at least the dimension it had. The cost
(rows times dimension, plus ``d * K`` per projection when the layout needs them) is a step function too,
but **not** monotone with projections: a segment that reaches K loses its projection, and
``rows * 4 < (K - 4) * K`` makes the cost drop. A bisection on lambda can therefore stop short of the
largest feasible lambda; :func:`fit_scale` instead evaluates every breakpoint (at most segments x
K / 4 of them, vectorised in chunks) and returns the largest lambda whose cost fits, whose dimensions
dominate every other feasible lambda's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class NearestMultiple:
    """Rounds x to the nearest multiple of ``step`` (halves up): 0, 4, 8, ..., K.

    Args:
        step: the width granularity (4: FBGEMM's training TBE).
    """

    step: int = 4

    def steps(self, embedding_dim: int) -> List[Tuple[float, int]]:
        """``(threshold, value)``: from x >= threshold on, x rounds to value (below the first, to 0)."""
        return [(m - self.step / 2, m) for m in range(self.step, embedding_dim + 1, self.step)]


@dataclass(frozen=True)
class NearestPowerOfTwo:
    """Rounds x to the nearest power of two in log2 (as DLRM's ``pow_2_round``), keeping TBE widths.

    2 ** j is taken from ``x >= 2 ** (j - 0.5)``; 1 and 2 are not multiples of 4 and round to 0 (the
    minimum dimension lifts them). A power past K is clipped to K.
    """

    def steps(self, embedding_dim: int) -> List[Tuple[float, int]]:
        out: List[Tuple[float, int]] = []
        j = 2
        while True:
            out.append((2.0 ** (j - 0.5), min(2**j, embedding_dim)))
            if 2**j >= embedding_dim:
                return out
            j += 1


Rounding = NearestMultiple | NearestPowerOfTwo


@dataclass(frozen=True)
class ScaledDims:
    """The result of :func:`fit_scale`.

    Args:
        dims: [S] int64 dimensions.
        scale: the chosen lambda: the breakpoint where these dimensions begin (any lambda up to the next
            breakpoint gives the same ones).
        cost: parameters they cost (values plus projections where counted).
    """

    dims: np.ndarray
    scale: float
    cost: int


def dims_cost(dims: np.ndarray, sizes: np.ndarray, embedding_dim: int, projections: bool) -> np.ndarray:
    """Parameters of dimension assignments.

    Args:
        dims: [..., S] dimensions.
        sizes: [S] rows per segment.
        embedding_dim: K.
        projections: count ``d * K`` for every non-empty segment with ``0 < d < K``.

    Returns:
        [...] int64 costs.
    """
    dims = np.asarray(dims, dtype=np.int64)
    cost = (dims * sizes).sum(-1)
    if projections:
        needs = (dims > 0) & (dims < embedding_dim) & (sizes > 0)
        cost = cost + (np.where(needs, dims, 0) * embedding_dim).sum(-1)
    return cost


def fit_scale(
    weights: np.ndarray,
    sizes: np.ndarray,
    embedding_dim: int,
    budget: int,
    rounding: Rounding = NearestMultiple(),
    min_dim: int = 0,
    projections: bool = False,
) -> ScaledDims:
    """The largest lambda whose dimensions ``clip(round(lambda * w), min_dim, K)`` cost at most ``budget``.

    Args:
        weights: [S] non-negative weights (0: the segment stays at ``min_dim``).
        sizes: [S] rows per segment (empty segments cost nothing).
        embedding_dim: K.
        budget: parameters allowed.
        rounding: onto which widths.
        min_dim: smallest dimension (a multiple of 4, <= K).
        projections: the layout needs a ``[d, K]`` projection per segment with ``0 < d < K`` (MDE).

    Returns:
        ScaledDims: dimensions [S], lambda and cost.

    Raises:
        ValueError: when even ``min_dim`` everywhere costs more than ``budget``.

    Example::

        fit_scale(np.array([2.0, 1.0]), np.array([10, 10]), 16, budget=120).dims   # array([8, 4])
    """
    w = np.asarray(weights, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if w.shape != sizes.shape or w.ndim != 1:
        raise ValueError(f"weights {w.shape} and sizes {sizes.shape} must be equal-length vectors")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("weights must be finite and non-negative")
    if not 0 <= min_dim <= embedding_dim:
        raise ValueError(f"min_dim {min_dim} outside [0, {embedding_dim}]")
    steps = rounding.steps(embedding_dim)
    thr = np.asarray([t for t, _ in steps], dtype=np.float64)
    val = np.asarray([0] + [v for _, v in steps], dtype=np.int64)
    pos = w > 0
    bp = thr[None, :] / w[pos][:, None]  # [A, J] ascending per row: lambda where segment a reaches val[j+1]
    cands = np.unique(np.concatenate([[0.0], bp.reshape(-1)]))[::-1]  # descending

    def dims_at(lams: np.ndarray) -> np.ndarray:
        d = np.zeros((lams.size, w.size), dtype=np.int64)
        if bp.size:
            level = (bp[None, :, :] <= lams[:, None, None]).sum(-1)  # exact: lambdas are these floats
            d[:, pos] = val[level]
        return np.clip(d, min_dim, embedding_dim)

    chunk = max(1, _CHUNK_ELEMENTS // max(1, bp.size))
    for lo in range(0, cands.size, chunk):
        lams = cands[lo : lo + chunk]
        d = dims_at(lams)
        cost = dims_cost(d, sizes, embedding_dim, projections)
        ok = np.nonzero(cost <= budget)[0]
        if ok.size:
            i = int(ok[0])
            return ScaledDims(dims=d[i], scale=float(lams[i]), cost=int(cost[i]))
    floor = int(dims_cost(np.full(w.size, min_dim), sizes, embedding_dim, projections))
    raise ValueError(
        f"budget of {budget:,} parameters is below the smallest layout ({floor:,} parameters at min_dim "
        f"{min_dim}{' with projections' if projections else ''})"
    )


def largest_uniform_dim(total_rows: int, embedding_dim: int, budget: int, step: int = 4) -> int:
    """The largest multiple of ``step`` in ``[0, K]`` with ``total_rows * d <= budget``."""
    if total_rows <= 0:
        return embedding_dim
    return min(embedding_dim, (budget // total_rows) // step * step)
