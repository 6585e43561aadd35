"""A pruned model: which entries of each table stay, and what retraining starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch

from recdim.config import PruneConfig
from recdim.layout.field_budget import field_kept_counts, field_magnitude_masks
from recdim.layout.masks import check_met_cr, kept_for_cr, magnitude_masks, mask_stats

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
    importance: Optional[Mapping[str, float]] = None,
) -> List[PrunedModel]:
    """Pruned models keeping the largest ``|scores|``: one per ``prune.crs`` (exact kept count, and an
    error for a rate the tables cannot meet within :data:`~recdim.layout.masks.CR_TOLERANCE`), or one at
    ``prune.eps``. Retraining starts from ``values`` and ``arch_state`` unless ``prune.init == "fresh"``.
    With ``importance`` each field first gets its share of the budget
    (:func:`~recdim.layout.field_budget.field_kept_counts`) and the scores rank within it.

    Args:
        method: the method name recorded in each model.
        scores: ``{feature: [N, K]}`` what is ranked (DNIS: ``e ⊙ alpha``; magnitude pruning: the table).
        prune: budgets and init rule.
        values: ``{feature: [N, K]}`` retraining's initial values (None: fresh).
        arch_state: the arch to start from (None: fresh).
        rule: how retraining starts, recorded in ``info["init"]``.
        importance: ``{feature: I_f}`` held-out field importance (field allocation), or None (one global
            ranking). Not with ``prune.eps``.

    Example::

        pruned = magnitude_pruned("magnitude", tables, cfg.prune, tables, arch_state, "trained values")
    """
    fresh = prune.init == "fresh"
    values, arch_state, rule = (None, None, "fresh") if fresh else (values, arch_state, rule)
    if prune.eps > 0:
        if importance is not None:
            raise ValueError(f"{method}: prune.eps ranks one threshold over all tables; field allocation needs crs")
        masks = magnitude_masks(scores, eps=prune.eps)
        return [
            PrunedModel(method, mask_stats(masks)["cr"], masks, values, arch_state, {"eps": prune.eps, "init": rule})
        ]
    out = []
    extra: Dict[str, Any] = {}
    if importance is not None:
        extra = {"allocation": "field", "field_importance": {f: float(importance[f]) for f in scores}}
    for cr in prune.crs:
        if importance is None:
            masks = magnitude_masks(scores, cr=cr)
        else:
            total = sum(v.numel() for v in scores.values())
            keep = kept_for_cr(total, cr)
            if keep < 1:
                raise ValueError(f"{method}: CR {cr:g} keeps no entry of the {total:,} the tables hold")
            dims = {f: v.size(1) for f, v in scores.items()}
            if len(set(dims.values())) != 1:
                raise ValueError(f"{method}: field allocation needs one table width, got {dims}")
            rows = {f: v.size(0) for f, v in scores.items()}
            counts = field_kept_counts({f: importance[f] for f in scores}, rows, next(iter(dims.values())), keep)
            masks = field_magnitude_masks(scores, counts)
        met = mask_stats(masks)["cr"]
        check_met_cr(cr, met, method)
        info = {"cr": cr, "init": rule, **extra}
        out.append(PrunedModel(method, met, masks, values, arch_state, info, target=cr))
    return out
