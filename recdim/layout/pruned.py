"""A pruned model: which entries of each table stay, and what retraining starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch

from recdim.config import PruneConfig
from recdim.layout.masks import check_met_cr, magnitude_masks, mask_stats

#: ``info["init"]`` rules under which a pruned model's values and arch are the searched (or trained) model
#: itself, masked: such a model serves as it is (exported without retraining).
SERVABLE_INITS = frozenset({"searched values, alpha folded in", "searched values S(V, s)", "trained uniform values"})


@dataclass
class PrunedModel:
    """One pruned model: which entries stay, and what retraining starts from.

    Args:
        method: the method that produced it.
        cr: compression rate actually met (uniform / kept).
        masks: ``{feature: bool [N, K]}``.
        values: ``{feature: [N, K]}`` initial table values for retraining (entries outside the mask are
            ignored), or None for a fresh masked initialisation.
        arch_state: arch state dict to start from, or None for a fresh arch (seeded).
        info: JSON-ready facts (target budget, snapshot step, init rule).
        target: the compression rate it was derived for (``prune.crs``), or None (a threshold ``eps``).

    Example::

        pm = PrunedModel("dnis", 4.0, {"user": torch.ones(944, 16, dtype=torch.bool)})
    """

    method: str
    cr: float
    masks: Dict[str, torch.Tensor]
    values: Optional[Dict[str, torch.Tensor]] = None
    arch_state: Optional[Dict[str, torch.Tensor]] = None
    info: Dict[str, Any] = field(default_factory=dict)
    target: Optional[float] = None


def magnitude_pruned(
    method: str,
    scores: Mapping[str, torch.Tensor],
    prune: PruneConfig,
    values: Optional[Dict[str, torch.Tensor]],
    arch_state: Optional[Dict[str, torch.Tensor]],
    rule: str,
) -> List[PrunedModel]:
    """Pruned models keeping the largest ``|scores|``: one per ``prune.crs`` (exact kept count, and an
    error for a rate the tables cannot meet within :data:`~recdim.layout.masks.CR_TOLERANCE`), or one at
    ``prune.eps``. Retraining starts from ``values`` and ``arch_state`` unless ``prune.init == "fresh"``.

    Args:
        method: the method name recorded in each model.
        scores: ``{feature: [N, K]}`` what is ranked (DNIS: ``e ⊙ alpha``; magnitude pruning: the table).
        prune: budgets and init rule.
        values: ``{feature: [N, K]}`` retraining's initial values (None: fresh).
        arch_state: the arch to start from (None: fresh).
        rule: how retraining starts, recorded in ``info["init"]``.

    Example::

        pruned = magnitude_pruned("magnitude", tables, cfg.prune, tables, arch_state, "trained values")
    """
    fresh = prune.init == "fresh"
    values, arch_state, rule = (None, None, "fresh") if fresh else (values, arch_state, rule)
    if prune.eps > 0:
        masks = magnitude_masks(scores, eps=prune.eps)
        return [
            PrunedModel(method, mask_stats(masks)["cr"], masks, values, arch_state, {"eps": prune.eps, "init": rule})
        ]
    out = []
    for cr in prune.crs:
        masks = magnitude_masks(scores, cr=cr)
        met = mask_stats(masks)["cr"]
        check_met_cr(cr, met, method)
        out.append(PrunedModel(method, met, masks, values, arch_state, {"cr": cr, "init": rule}, target=cr))
    return out
