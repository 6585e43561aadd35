"""Magnitude-pruned models: one per requested rate, exact kept counts, and an error naming a rate the
tables cannot produce."""

import pytest
import torch

from recdim.config import PruneConfig
from recdim.layout.masks import check_met_cr
from recdim.layout.pruned import magnitude_pruned


def test_one_model_per_rate_with_its_target():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(50, 8, generator=g), "b": torch.randn(30, 8, generator=g)}
    pruned = magnitude_pruned("dnis", scores, PruneConfig(crs=(2.0, 4.0)), scores, {"w": torch.ones(1)}, "searched")
    assert [(pm.target, pm.cr, pm.info["cr"]) for pm in pruned] == [(2.0, 2.0, 2.0), (4.0, 4.0, 4.0)]
    assert all(pm.values is scores and pm.arch_state is not None for pm in pruned)
    fresh = magnitude_pruned("dnis", scores, PruneConfig(crs=(2.0,), init="fresh"), scores, {}, "searched")
    assert fresh[0].values is None and fresh[0].arch_state is None and fresh[0].info["init"] == "fresh"
    eps = magnitude_pruned("dnis", scores, PruneConfig(eps=0.5), scores, None, "searched")
    assert len(eps) == 1 and eps[0].target is None and eps[0].info["eps"] == 0.5


def test_a_rate_the_tables_cannot_produce_is_an_error():
    scores = {"a": torch.randn(10, 4)}  # 40 entries
    with pytest.raises(ValueError, match="CR 1000 keeps no entry of the 40"):
        magnitude_pruned("dnis", scores, PruneConfig(crs=(1000.0,)), None, None, "fresh")
    # CR 15 keeps round(40 / 15) = 3 entries: CR 13.3, 11% away.
    with pytest.raises(ValueError, match="dnis: CR 15 cannot be produced: the nearest pruned model meets CR 13.33"):
        magnitude_pruned("dnis", scores, PruneConfig(crs=(2.0, 15.0)), None, None, "fresh")
    check_met_cr(8.0, 8.1, "pep")  # 1.25%: within the 2% tolerance
    with pytest.raises(ValueError, match="CR 1000"):
        check_met_cr(1000.0, 1024.0, "dnis")
