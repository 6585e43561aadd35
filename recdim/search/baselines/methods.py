"""Baseline run names (``ue``, ``ue@8``, ``grid``, ``random``, ``random@3``, ``mde``) -> dimension assignments.

``grid`` and ``random`` are searches: :func:`candidate_methods` expands them into runs (``ue@<d>``,
``random@<i>``) that are trained one by one and chosen between on validation; every other name is one
run, and :func:`baseline_dims` gives its dimensions.
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Tuple

import numpy as np

from recdim.config.baseline import BaselineConfig
from recdim.layout.dims import DimAssignment, budget_for_cr
from recdim.search.baselines.grid import grid_dims, grid_methods
from recdim.search.baselines.mde import mde_dims, mde_rounding
from recdim.search.baselines.random_mixed import random_mixed_dims
from recdim.search.baselines.uniform import uniform_dims, uniform_for_cr
from recdim.layout.blocks import make_block_plan

BASELINES = ("ue", "grid", "random", "mde")
SELECTED = ("grid", "random")


def parse_method(name: str) -> Tuple[str, Optional[int]]:
    """Splits ``base@arg``: ``"ue@8" -> ("ue", 8)``, ``"mde" -> ("mde", None)``.

    Raises:
        ValueError: for an argument that is not a non-negative integer.
    """
    base, sep, arg = name.partition("@")
    if not sep:
        return name, None
    if not arg.isdigit():
        raise ValueError(f"method {name!r}: the part after '@' must be a non-negative integer")
    return base, int(arg)


def is_baseline(name: str) -> bool:
    """True for the baseline names (with or without ``@``)."""
    return parse_method(name)[0] in BASELINES


def baseline_dims(
    name: str, cfg: BaselineConfig, counts: Mapping[str, np.ndarray], embedding_dim: int, cr: float
) -> DimAssignment:
    """Dimensions of one baseline run at compression rate ``cr``.

    Args:
        name: ``ue`` (``cfg.ue_dim``, or the largest dimension that meets ``cr``), ``ue@<d>``,
            ``random@<i>`` or ``mde``.
        cfg: baseline settings.
        counts: ``{feature: [N] train counts}`` in provider order (``PreparedDataset.counts``).
        embedding_dim: K.
        cr: compression rate every run must meet.

    Returns:
        DimAssignment whose ``params`` (values plus projections) fit ``budget_for_cr``.

    Example::

        a = baseline_dims("mde", cfg.search.baseline, {f: ds.counts(f) for f in features}, 16, 4.0)
        masks = a.masks()
    """
    base, arg = parse_method(name)
    num = {f: len(c) for f, c in counts.items()}
    budget = budget_for_cr(num, embedding_dim, cr)
    if base == "ue":
        dim = arg if arg is not None else cfg.ue_dim
        if not dim:
            return uniform_for_cr(num, embedding_dim, cr)
        a = uniform_dims(num, dim, embedding_dim)
        if a.params > budget:
            raise ValueError(f"{name}: {a.params:,} parameters exceed the budget of {budget:,} at CR {cr:g}")
        return a
    if base == "random" and arg is not None:
        plan = make_block_plan(cfg.blocking, counts, cfg.num_blocks)
        return random_mixed_dims(plan, embedding_dim, budget, cfg.random_seed, arg, cfg.random_min_dim)
    if base == "mde" and arg is None:
        plan = make_block_plan(cfg.blocking, counts, cfg.num_blocks)
        return mde_dims(counts, plan, embedding_dim, budget, cfg.mde_alpha, mde_rounding(cfg.mde_pow2), cfg.mde_min_dim)
    if base in SELECTED:
        raise ValueError(f"{name!r} is a search over several runs; expand it with candidate_methods first")
    raise ValueError(f"unknown baseline {name!r}; known: ue, ue@<d>, grid, random, random@<i>, mde")


def candidate_methods(
    name: str, cfg: BaselineConfig, num_embeddings: Mapping[str, int], embedding_dim: int, cr: float
) -> List[str]:
    """The runs behind a method name: grid -> ``ue@<d>`` per grid dimension that fits; random ->
    ``random@0 .. random@<N-1>``; anything else (search methods included) -> ``[name]``.

    Example::

        candidate_methods("grid", BaselineConfig(grid=(4, 8, 16)), {"user": 944}, 16, 2.0)  # ["ue@4", "ue@8"]
    """
    if name == "grid":
        return grid_methods(grid_dims(num_embeddings, embedding_dim, cfg.grid, cr))
    if name == "random":
        return [f"random@{i}" for i in range(cfg.random_samples)]
    return [name]
