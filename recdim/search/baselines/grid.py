"""Grid search over uniform dimensions: the candidates; the harness trains each and keeps the best on validation."""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

import numpy as np

from recdim.layout.dims import ALIGN, DimAssignment, budget_for_cr
from recdim.search.method import BaselineMethod


def grid_dims(
    num_embeddings: Mapping[str, int],
    embedding_dim: int,
    grid: Sequence[int],
    cr: Optional[float] = None,
) -> List[int]:
    """Uniform dimensions worth training: those in ``grid`` that fit in K and, with ``cr``, in the budget.

    The papers' grid (4..64 step 4) runs past small K; a K-wide model cannot hold more than K columns,
    so those are left out.

    Args:
        num_embeddings: ``{feature: N}``.
        embedding_dim: K.
        grid: candidate dimensions (positive multiples of 4).
        cr: compression rate every candidate must meet (None: no budget).

    Returns:
        Sorted distinct dimensions; each becomes a run ``ue@<d>``.

    Raises:
        ValueError: when no candidate is left.

    Example::

        grid_dims({"user": 944, "item": 1683}, 16, range(4, 65, 4), cr=2.0)   # [4, 8]
    """
    if any(d <= 0 or d % ALIGN for d in grid):
        raise ValueError(f"grid dimensions must be positive multiples of {ALIGN}, got {list(grid)}")
    rows = sum(int(n) for n in num_embeddings.values())
    budget = budget_for_cr(num_embeddings, embedding_dim, cr) if cr is not None else None
    out = sorted({int(d) for d in grid if d <= embedding_dim and (budget is None or d * rows <= budget)})
    if not out:
        raise ValueError(
            f"no grid dimension of {list(grid)} fits K = {embedding_dim}" + (f" at CR {cr:g}" if cr is not None else "")
        )
    return out


def grid_methods(dims: Sequence[int]) -> List[str]:
    """Run names of grid candidates: ``["ue@4", "ue@8", ...]``."""
    return [f"ue@{d}" for d in dims]


class GridMethod(BaselineMethod):
    """Grid search: one ``ue@<d>`` run per dimension of ``baseline.grid`` that fits K and the budget; the
    comparison trains each and keeps the best on validation."""

    name = "grid"

    def candidates(self, num_embeddings: Mapping[str, int], cr: float) -> List[str]:
        return grid_methods(grid_dims(num_embeddings, self.cfg.model.embedding_dim, self.cfg.search.baseline.grid, cr))

    def assign(self, counts: Mapping[str, np.ndarray], cr: float, arg: Optional[int] = None) -> DimAssignment:
        raise ValueError("'grid' is a search over several runs; expand it with candidates() first")
