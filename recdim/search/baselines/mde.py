"""MDE: mixed dimension embeddings with the power rule (Ginart et al., "Mixed Dimension Embeddings with
Application to Memory-Efficient Recommendation Systems", 2019/2021).

The embedding layer is cut into blocks (here: the frequency blocks of :mod:`recdim.layout.blocks`; per
table with ``num_blocks = 1, blocking = "per_table"``). Block b of ``n_b`` rows gets dimension d_b and, when
``0 < d_b < K``, a learnable projection ``[d_b, K]`` to the common width K (a block at K is read as is).
Dimensions follow the paper's power rule ``d_b = lambda * p_b ** alpha``: p_b is the probability that a
query hits a row of the block (its ids' mean train count over all train occurrences), alpha in [0, 1] the
temperature (0: uniform), lambda set by the budget.

What this implementation does differently from the public DLRM code (``md_solver`` /
``alpha_power_rule`` / ``create_emb`` in ``dlrm_s_pytorch.py``), whose defects it fixes:

- In ``create_emb``, tables with ``n <= md_threshold`` fall into the plain ``nn.EmbeddingBag(n, m)``
  branch while ``m`` is the *list* of mixed dimensions, so such tables either fail or get a wrong width.
  Here every block gets its own dimension; there is no threshold.
- ``md_solver`` takes popularity from row counts alone (``p ∝ 1 / n``: every row of a table equally
  likely) instead of measured frequencies; here p comes from the train counts of the block's ids.
- With a budget B, ``alpha_power_rule`` sets ``lambda = B / sum(n ** (1 - alpha))`` *before* rounding to
  powers of two and clamping to >= 1, and never counts the ``d x K`` projections, so the layer it builds
  can exceed B; a dimension above the base width is not clipped (``PrEmbeddingBag`` then raises). Here
  lambda is chosen on the rounded, clipped dimensions with the projections counted
  (:func:`recdim.search.baselines.scaling.fit_scale`, an exact search over lambda's breakpoints: the cost
  is not monotone in lambda, since a block that reaches K loses its projection), so the reported
  parameters and bytes are what the layout stores and never exceed the budget.
- Dimensions are multiples of 4 (FBGEMM's training TBE; optional power-of-two rounding as DLRM's
  ``pow_2_round``), at least ``min_dim`` and at most K.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from recdim.layout.blocks import BlockPlan, make_block_plan
from recdim.layout.dims import DimAssignment, budget_for_cr, projections_for, segment_dims_to_rows, segment_sizes
from recdim.search.baselines.scaling import NearestMultiple, NearestPowerOfTwo, Rounding, fit_scale
from recdim.search.baselines.segments import block_segments, segment_popularity
from recdim.search.method import BaselineMethod


def mde_dims(
    counts: Mapping[str, np.ndarray],
    plan: BlockPlan,
    embedding_dim: int,
    budget: int,
    alpha: float = 0.3,
    rounding: Rounding = NearestMultiple(),
    min_dim: int = 4,
) -> DimAssignment:
    """MDE dimensions per (feature, block) at ``budget`` parameters, projections included.

    Args:
        counts: ``{feature: [N] train counts}`` (``PreparedDataset.counts``), in plan order.
        plan: the blocks.
        embedding_dim: K.
        budget: parameters allowed: kept values plus ``d * K`` per projection.
        alpha: temperature of the power rule (0: uniform).
        rounding: :class:`NearestMultiple` (4) or :class:`NearestPowerOfTwo`.
        min_dim: smallest dimension of a block (a multiple of 4).

    Returns:
        DimAssignment: method ``mde``, with its projections; ``info`` holds alpha, lambda and per block
        ``[feature, start, stop, p, d]``.

    Example::

        plan = make_block_plan("per_table", counts, 1)       # MDE per table
        a = mde_dims(counts, plan, 16, budget_for_cr(rows, 16, 4.0), alpha=0.3)
        a.params <= budget, a.projection_bytes
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if list(counts) != list(plan.features):
        raise ValueError(f"counts features {list(counts)} differ from the plan's {list(plan.features)}")
    segments, _ = block_segments(plan)
    sizes = segment_sizes(segments)
    p = segment_popularity(segments, counts)
    weights = np.power(p, alpha) if alpha > 0 else np.ones_like(p)
    fit = fit_scale(weights, sizes, embedding_dim, budget, rounding, min_dim, projections=True)
    num = {f: plan.num_embeddings(f) for f in plan.features}
    dims = fit.dims.tolist()
    return DimAssignment(
        segment_dims_to_rows(segments, dims, num),
        embedding_dim,
        method="mde",
        projections=tuple(projections_for(segments, dims, embedding_dim)),
        info={
            "alpha": float(alpha),
            "lambda": fit.scale,
            "rounding": type(rounding).__name__,
            "blocks": [
                [s.feature, s.start, s.stop, float(pb), int(d)] for s, pb, d in zip(segments, p, dims) if s.rows > 0
            ],
        },
    )


def mde_rounding(pow2: bool) -> Rounding:
    """:class:`NearestPowerOfTwo` when ``pow2``, else :class:`NearestMultiple` of 4."""
    return NearestPowerOfTwo() if pow2 else NearestMultiple()


class MDEMethod(BaselineMethod):
    """MDE: the power rule on the frequency blocks of ``baseline``, with learned projections to K."""

    name = "mde"

    def assign(self, counts: Mapping[str, np.ndarray], cr: float, arg: Optional[int] = None) -> DimAssignment:
        b, K = self.cfg.search.baseline, self.cfg.model.embedding_dim
        budget = budget_for_cr({f: len(c) for f, c in counts.items()}, K, cr)
        plan = make_block_plan(b.blocking, counts, b.num_blocks)
        rounding = mde_rounding(b.mde_pow2)
        try:
            return mde_dims(counts, plan, K, budget, b.mde_alpha, rounding, b.mde_min_dim)
        except ValueError:
            if b.mde_min_dim == 0:
                raise
        # Budget-aware: below the smallest layout at mde_min_dim (every block at 4 dims: CR K / 4), the power
        # rule runs with a floor of 0, so the least popular blocks round to 0 dims (dropped) first.
        a = mde_dims(counts, plan, K, budget, b.mde_alpha, rounding, 0)
        a.info["min_dim"] = 0
        a.info["min_dim_lowered_from"] = b.mde_min_dim
        return a
