"""``recdim prune`` writes nothing unless every requested rate has its pruned model."""

from pathlib import Path

import pytest
import torch

from recdim.layout.pruned import PrunedModel
from recdim.prune.run import check_every_budget


def pm(target):
    return PrunedModel("x", target or 3.0, {"a": torch.ones(2, 4, dtype=torch.bool)}, target=target)


def test_every_rate_needs_its_model():
    check_every_budget([pm(2.0), pm(4.0)], (2.0, 4.0), Path("run"))
    check_every_budget([pm(None)], (), Path("run"))  # eps / a method's own rate
    with pytest.raises(ValueError, match="run: no pruned model for CR 8"):
        check_every_budget([pm(2.0), pm(4.0)], (2.0, 4.0, 8.0), Path("run"))
    with pytest.raises(ValueError, match="no pruned model"):
        check_every_budget([], (), Path("run"))
