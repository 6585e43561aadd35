"""Magnitude pruning of the trained uniform table: the registered method trains the plain model, keeps the
largest |w| at exactly the budget's count, and retrains from the trained values (one search, every budget)."""

import dataclasses

import pytest
import torch
import torch.distributed as dist

from recdim.config import (
    Config,
    DataConfig,
    ModelConfig,
    PrepareConfig,
    PruneConfig,
    SearchConfig,
    SyntheticConfig,
    TrainConfig,
)
from recdim.data.preprocess import prepare
from recdim.layout.masks import kept_for_cr
from recdim.prune.derive import load_searched
from recdim.search.run import run_search
from recdim.train.distributed import destroy


@pytest.fixture
def config(tmp_path):
    path = prepare(
        PrepareConfig(
            source="synthetic",
            output=str(tmp_path / "syn"),
            min_count=1,
            synthetic=SyntheticConfig(
                rows=4000, cardinalities=(300, 200, 50, 20), strengths=(1.0, 0.5, 0.0, 0.0), ranks=(4, 4, 2, 2)
            ),
        )
    )
    return Config(
        data=DataConfig(path=str(path)),
        model=ModelConfig(arch="fm", embedding_dim=8),
        train=TrainConfig(epochs=1, batch_size=256, device="cpu", progress=False, patience=0, seed=0, max_steps=8),
        search=SearchConfig(method="magnitude"),
        prune=PruneConfig(crs=(2.0, 4.0)),
    )


def _cleanup():
    if dist.is_initialized():
        destroy()


def test_prunes_the_trained_table_by_magnitude(tmp_path, config):
    try:
        results = run_search(config, tmp_path / "search")
        assert results["search"]["method"] == "magnitude"
        method, searched = load_searched(tmp_path / "search")
        pruned = method.derive(searched, config.prune)
    finally:
        _cleanup()
    tables = {f: searched.tables[f"t_{f}"] for f in searched.features}
    total = sum(t.numel() for t in tables.values())
    flat = torch.cat([t.abs().reshape(-1) for t in tables.values()])
    assert [pm.info["cr"] for pm in pruned] == [2.0, 4.0]
    for pm in pruned:
        kept = torch.cat([pm.masks[f].reshape(-1) for f in searched.features])
        assert int(kept.sum()) == kept_for_cr(total, pm.info["cr"])
        assert float(flat[kept].min()) >= float(flat[~kept].max())  # every kept |w| >= every dropped one
        assert all(torch.equal(pm.values[f], tables[f]) for f in searched.features)  # retrain from trained values
        assert pm.arch_state is not None and pm.method == "magnitude"
    fresh = method.derive(searched, dataclasses.replace(config.prune, init="fresh"))
    assert all(pm.values is None and pm.arch_state is None for pm in fresh)


def test_runs_as_a_comparison_cell(tmp_path, config):
    from recdim.pipeline import run_experiment

    try:
        cell = run_experiment(config, "magnitude", 4.0, 0, tmp_path / "cell")
    finally:
        _cleanup()
    assert cell["method"] == "magnitude" and abs(cell["cr"] - 4.0) < 0.05
    assert 0.0 < cell["test"]["auc"] < 1.0 and cell["search_time_s"] > 0
