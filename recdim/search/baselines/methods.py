"""Baseline run names (``ue``, ``ue@8``, ``grid``, ``random``, ``random@3``, ``mde``) -> dimension assignments.

Thin functions over the method registry (:mod:`recdim.config.methods`): each baseline's method object
(:class:`recdim.search.method.BaselineMethod`) does the work. ``grid`` and ``random`` are searches:
:func:`candidate_methods` expands them into runs (``ue@<d>``, ``random@<i>``) that are trained one by one
and chosen between on validation; every other name is one run, and :func:`baseline_dims` gives its
dimensions.
"""

from __future__ import annotations

import dataclasses
from typing import List, Mapping, Optional, Tuple

import numpy as np

from recdim.config import Config, ModelConfig, SearchConfig
from recdim.config.baseline import BaselineConfig
from recdim.config.methods import names, parse
from recdim.layout.dims import DimAssignment
from recdim.search.method import BaselineMethod, create

BASELINES = names("baseline")


def parse_method(name: str) -> Tuple[str, Optional[int]]:
    """Splits ``base@arg``: ``"ue@8" -> ("ue", 8)``, ``"mde" -> ("mde", None)``.

    Raises:
        ValueError: for an argument that is not a non-negative integer.
    """
    base, sep, arg = name.partition("@")
    if sep and not arg.isdigit():
        raise ValueError(f"method {name!r}: the part after '@' must be a non-negative integer")
    return base, int(arg) if sep else None


def is_baseline(name: str) -> bool:
    """True for the baseline names (with or without ``@``)."""
    return parse_method(name)[0] in BASELINES


def baseline_config(cfg: BaselineConfig, embedding_dim: int) -> Config:
    """A config holding just what baselines read: ``search.baseline`` and ``model.embedding_dim``."""
    return dataclasses.replace(
        Config(), model=ModelConfig(embedding_dim=embedding_dim), search=SearchConfig(baseline=cfg)
    )


def baseline_method(name: str, cfg: BaselineConfig, embedding_dim: int) -> Tuple[BaselineMethod, Optional[int]]:
    """The registered baseline object of ``name`` and its ``@`` argument."""
    entry, arg = parse(name, "baseline")
    if entry.kind != "baseline":
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)} (and ue@<d>, random@<i>)")
    return create(entry.name, baseline_config(cfg, embedding_dim), kind="baseline"), arg


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
    method, arg = baseline_method(name, cfg, embedding_dim)
    return method.assign(counts, cr, arg)


def candidate_methods(
    name: str, cfg: BaselineConfig, num_embeddings: Mapping[str, int], embedding_dim: int, cr: float
) -> List[str]:
    """The runs behind a method name: grid -> ``ue@<d>`` per grid dimension that fits; random ->
    ``random@0 .. random@<N-1>``; anything else (search methods included) -> ``[name]``.

    Example::

        candidate_methods("grid", BaselineConfig(grid=(4, 8, 16)), {"user": 944}, 16, 2.0)  # ["ue@4", "ue@8"]
    """
    if not is_baseline(name) or "@" in name:
        return [name]
    method, _ = baseline_method(name, cfg, embedding_dim)
    return method.candidates(num_embeddings, cr)
