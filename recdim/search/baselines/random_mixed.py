"""Random search over mixed dimensions: random descending dimensions per frequency block, scaled to the budget.

Sample i draws, per alpha row group (one group of L blocks for global blocking, one per feature per
table; the same blocks as DNIS), L dimensions uniformly from {4, 8, ..., K} and sorts them in descending
order (block 0 holds the most frequent ids). The shape is then scaled by the largest lambda whose
rounded dimensions meet the budget (:func:`recdim.search.baselines.scaling.fit_scale`); scaling and
rounding are monotone, so the dimensions stay descending. One common scale can leave much of the
budget unused (the next step of a large block overshoots), so :func:`fill_budget` then adds 4 at a time
to the blocks furthest below their scaled target, wherever the budget and the descending order allow
(largest-remainder rounding). The harness trains every sample and keeps the best on validation.
"""

from __future__ import annotations

from typing import List, Mapping, Optional

import numpy as np

from recdim.layout.blocks import BlockPlan, make_block_plan
from recdim.layout.dims import DimAssignment, budget_for_cr, segment_dims_to_rows
from recdim.search.baselines.scaling import NearestMultiple, fit_scale
from recdim.search.baselines.segments import block_segments
from recdim.search.method import BaselineMethod


def random_shape(plan: BlockPlan, embedding_dim: int, rng: np.random.Generator) -> np.ndarray:
    """Descending random dimensions per alpha row group.

    Args:
        plan: the frequency blocks.
        embedding_dim: K.
        rng: the sample's generator.

    Returns:
        [plan.num_alpha_rows] int64 multiples of 4 in [4, K], non-increasing within every group of L.
    """
    L = plan.num_blocks
    groups = plan.num_alpha_rows // L
    draws = rng.integers(1, embedding_dim // 4 + 1, size=(groups, L)) * 4
    return -np.sort(-draws, axis=1).reshape(-1).astype(np.int64)


def fill_budget(
    dims: np.ndarray, target: np.ndarray, sizes: np.ndarray, group_size: int, embedding_dim: int, budget: int
) -> np.ndarray:
    """Raises dimensions by 4 while the budget lasts, furthest-below-target first, keeping every group descending.

    Args:
        dims: [A] int64 rounded dimensions (non-increasing within each group of ``group_size``).
        target: [A] the unrounded scaled shape (lambda * w).
        sizes: [A] rows per alpha row (0: an empty block, never raised and not part of the order).
        group_size: L.
        embedding_dim: K.
        budget: parameters allowed (``sum sizes * dims`` must stay within it).

    Returns:
        [A] int64 dimensions, each raised only where the raise fits.
    """
    d = dims.astype(np.int64).copy()
    cost = int((d * sizes).sum())
    prev = np.full(d.size, -1, dtype=np.int64)  # previous non-empty block of the same group
    for g in range(0, d.size, group_size):
        last = -1
        for a in range(g, g + group_size):
            prev[a] = last
            if sizes[a] > 0:
                last = a
    while True:
        for a in np.argsort(-(target - d), kind="stable"):
            if sizes[a] == 0 or d[a] + 4 > embedding_dim or cost + 4 * int(sizes[a]) > budget:
                continue
            if prev[a] >= 0 and d[a] + 4 > d[prev[a]]:
                continue
            d[a] += 4
            cost += 4 * int(sizes[a])
            break
        else:
            return d


def random_mixed_dims(
    plan: BlockPlan, embedding_dim: int, budget: int, seed: int, sample: int, min_dim: int = 0
) -> DimAssignment:
    """Random sample ``sample`` of descending block dimensions, scaled to ``budget`` parameters.

    Args:
        plan: the frequency blocks (``make_block_plan``, as DNIS).
        embedding_dim: K.
        budget: parameters allowed (``budget_for_cr``).
        seed: search seed; sample i is drawn from ``(seed, i)`` only, whatever else is drawn.
        sample: i.
        min_dim: smallest dimension after scaling (0 lets a block be dropped).

    Returns:
        DimAssignment: method ``random@<i>``; ``info`` has the drawn shape, the scale and the block dims.

    Example::

        plan = make_block_plan("global", counts, 10)
        a = random_mixed_dims(plan, 16, budget_for_cr(plan_rows, 16, 4.0), seed=0, sample=3)
    """
    rng = np.random.default_rng([int(seed), int(sample)])
    shape = random_shape(plan, embedding_dim, rng)
    segments, rows = block_segments(plan)
    sizes = np.bincount(rows, weights=[s.rows for s in segments], minlength=plan.num_alpha_rows).astype(np.int64)
    fit = fit_scale(shape.astype(np.float64), sizes, embedding_dim, budget, NearestMultiple(), min_dim)
    block_dims = fill_budget(fit.dims, fit.scale * shape, sizes, plan.num_blocks, embedding_dim, budget)
    seg_dims = block_dims[rows]
    num = {f: plan.num_embeddings(f) for f in plan.features}
    return DimAssignment(
        segment_dims_to_rows(segments, seg_dims.tolist(), num),
        embedding_dim,
        method=f"random@{sample}",
        info={
            "sample": int(sample),
            "seed": int(seed),
            "shape": shape.tolist(),
            "scale": fit.scale,
            "scaled_dims": fit.dims.tolist(),
            "block_dims": block_dims.tolist(),
            "blocking": plan.scheme,
            "num_blocks": plan.num_blocks,
        },
    )


class RandomMethod(BaselineMethod):
    """Random search: ``random`` expands into ``random@0 .. random@<N-1>`` (``baseline.random_samples``),
    each one sample of :func:`random_mixed_dims` on the frequency blocks of ``baseline``."""

    name = "random"

    def candidates(self, num_embeddings: Mapping[str, int], cr: float) -> List[str]:
        return [f"random@{i}" for i in range(self.cfg.search.baseline.random_samples)]

    def assign(self, counts: Mapping[str, np.ndarray], cr: float, arg: Optional[int] = None) -> DimAssignment:
        if arg is None:
            raise ValueError("'random' is a search over several runs; expand it with candidates() first")
        b, K = self.cfg.search.baseline, self.cfg.model.embedding_dim
        budget = budget_for_cr({f: len(c) for f, c in counts.items()}, K, cr)
        plan = make_block_plan(b.blocking, counts, b.num_blocks)
        return random_mixed_dims(plan, K, budget, b.random_seed, arg, b.random_min_dim)
