"""A pruned model: which entries of each table stay, and what retraining starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch


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

    Example::

        pm = PrunedModel("dnis", 4.0, {"user": torch.ones(944, 16, dtype=torch.bool)})
    """

    method: str
    cr: float
    masks: Dict[str, torch.Tensor]
    values: Optional[Dict[str, torch.Tensor]] = None
    arch_state: Optional[Dict[str, torch.Tensor]] = None
    info: Dict[str, Any] = field(default_factory=dict)
