"""Uniform embedding (UE): every row of every feature at one dimension d."""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import torch

from recdim.layout.dims import ALIGN, DimAssignment, budget_for_cr
from recdim.search.baselines.scaling import largest_uniform_dim
from recdim.search.method import BaselineMethod


def uniform_dims(num_embeddings: Mapping[str, int], dim: int, embedding_dim: int) -> DimAssignment:
    """Every row keeps its first ``dim`` columns.

    Args:
        num_embeddings: ``{feature: N}``.
        dim: d, a multiple of 4 in ``[0, K]``.
        embedding_dim: K.

    Returns:
        DimAssignment: method ``ue@<d>``.

    Example::

        uniform_dims({"user": 944, "item": 1683}, 8, 16).params    # 21_016
    """
    if dim < 0 or dim > embedding_dim or dim % ALIGN:
        raise ValueError(f"uniform dimension {dim} must be a multiple of {ALIGN} in [0, {embedding_dim}]")
    dims = {f: torch.full((int(n),), dim, dtype=torch.int64) for f, n in num_embeddings.items()}
    return DimAssignment(dims, embedding_dim, method=f"ue@{dim}", info={"uniform_dim": dim})


def uniform_dim_for_cr(num_embeddings: Mapping[str, int], embedding_dim: int, cr: float) -> int:
    """The largest multiple of 4 whose uniform layout meets compression rate ``cr``.

    Args:
        num_embeddings: ``{feature: N}``.
        embedding_dim: K.
        cr: compression rate (>= 1).

    Returns:
        int: d with ``sum N * d <= round(sum N * K / cr)``.

    Raises:
        ValueError: when not even d = 4 fits (CR above about K / 4).

    Example::

        uniform_dim_for_cr({"user": 944, "item": 1683}, 16, 4.0)   # 4
    """
    budget = budget_for_cr(num_embeddings, embedding_dim, cr)
    d = largest_uniform_dim(sum(int(n) for n in num_embeddings.values()), embedding_dim, budget, ALIGN)
    if d <= 0:
        raise ValueError(
            f"no uniform dimension (a multiple of {ALIGN}) meets CR {cr:g} with K = {embedding_dim}; "
            f"the highest uniform CR is about {embedding_dim / ALIGN:g}"
        )
    return d


def uniform_for_cr(num_embeddings: Mapping[str, int], embedding_dim: int, cr: float) -> DimAssignment:
    """UE at the largest dimension that meets ``cr`` (method ``ue``)."""
    a = uniform_dims(num_embeddings, uniform_dim_for_cr(num_embeddings, embedding_dim, cr), embedding_dim)
    return DimAssignment(a.dims, embedding_dim, method="ue", info={**a.info, "target_cr": cr})


class UniformMethod(BaselineMethod):
    """UE: ``ue`` takes ``baseline.ue_dim`` (0: the largest dimension that meets the budget), ``ue@<d>``
    dimension d, which must fit the budget.

    Example::

        UniformMethod(cfg).assign({"user": ds.counts("user")}, 4.0, arg=8).params
    """

    name = "ue"

    def assign(self, counts: Mapping[str, np.ndarray], cr: float, arg: Optional[int] = None) -> DimAssignment:
        num = {f: len(c) for f, c in counts.items()}
        K = self.cfg.model.embedding_dim
        dim = arg if arg is not None else self.cfg.search.baseline.ue_dim
        if arg is None and not dim:  # ue: the largest dim the budget allows; ue@0: every field at 0 dims
            return uniform_for_cr(num, K, cr)
        a = uniform_dims(num, dim, K)
        budget = budget_for_cr(num, K, cr)
        if a.params > budget:
            name = f"ue@{dim}" if arg is not None else "ue"
            raise ValueError(f"{name}: {a.params:,} parameters exceed the budget of {budget:,} at CR {cr:g}")
        return a
