"""Retraining with part of the model frozen: +FE keeps the tier tables, +IF keeps the arch, all changes both."""

from pathlib import Path

import pytest
import torch

from recdim.config import load
from recdim.data.prepared import PreparedDataset
from recdim.data.preprocess import prepare
from recdim.layout.pruned import PrunedModel
from recdim.prune.planner import PlannerConfig
from recdim.prune.store import write_pruned
from recdim.retrain.freeze import retrain_scope
from recdim.retrain.tier_weights import gather_tier_values
from recdim.retrain.tiers import run_retrain, tiered_session

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("freeze")
    sets = (
        f"prepare.output={root / 'data'}",
        "prepare.synthetic.rows=3000",
        "train.epochs=1",
        "train.max_steps=4",
        "train.batch_size=256",
        "train.progress=false",
        "train.device=cpu",
        "model.embedding_dim=8",
    )
    cfg = load(str(ROOT / "configs" / "demo.toml"), sets)
    prepare(cfg.prepare)
    ds = PreparedDataset(cfg.data_path)
    masks = {}
    for i, f in enumerate(ds.feature_names(cfg.data.features)):
        m = torch.zeros(ds.schema[f].num_embeddings, 8, dtype=torch.bool)
        m[:, : 4 + 4 * (i % 2)] = True
        masks[f] = m
    pruned = write_pruned(root / "pruned", PrunedModel("ue", 1.5, masks, info={"init": "fresh"}), PlannerConfig(), {})
    return cfg, pruned, root


def _state(session, plans):
    tables = {k: torch.cat([t.clone() for t in v]) for k, v in gather_tier_values(session.dmp, plans).items()}
    arch = {k: v.detach().clone() for k, v in session.model.arch.state_dict().items()}
    return tables, arch


@pytest.mark.parametrize("mode", ["all", "frozen_embeddings", "frozen_interaction"])
def test_scope_freezes_what_it_names(setup, mode):
    cfg, pruned, _ = setup
    session, plans, _ = tiered_session(cfg, pruned, None)
    t0, a0 = _state(session, plans)
    with retrain_scope(session, mode):
        session.trainer.fit(session.train_loader, session.val_loader)
    t1, a1 = _state(session, plans)
    tables_same = all(torch.equal(t0[k], t1[k]) for k in t0)
    arch_same = all(torch.equal(a0[k], a1[k]) for k in a0 if a0[k].is_floating_point())
    assert tables_same == (mode == "frozen_embeddings")
    assert arch_same == (mode == "frozen_interaction")
    lrs = [g["lr"] for name, o in session.trainer.optimizer.optimizers if name == "dense" for g in o.param_groups]
    assert lrs and all(lr > 0 for lr in lrs)  # restored after the scope


def test_run_retrain_records_the_mode_and_rejects_unknown(setup):
    cfg, pruned, root = setup
    import dataclasses

    frozen = dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, retrain="frozen_embeddings"))
    results = run_retrain(frozen, pruned, root / "retrain")
    assert results["retrain_mode"] == "frozen_embeddings"
    with pytest.raises(ValueError, match="prune.retrain must be one of"):
        with retrain_scope(None, "frozen_everything"):
            pass


def test_retrain_none_scores_the_searched_model_without_a_step(setup):
    cfg, pruned, root = setup
    import dataclasses

    none = dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, retrain="none"))
    with pytest.raises(ValueError, match="prune.init = 'inherit'"):  # a fresh start is not a searched model
        run_retrain(none, pruned, root / "none-fresh")
    from recdim.layout.pruned import PrunedModel
    from recdim.prune.planner import PlannerConfig
    from recdim.prune.store import read_pruned, write_pruned

    sp = read_pruned(pruned)
    g = torch.Generator().manual_seed(3)
    values = {f: torch.randn(m.shape, generator=g) * 0.1 for f, m in sp.masks.items()}
    pm = PrunedModel("dnis", 1.5, sp.masks, values, info={"init": "searched values, alpha folded in"})
    searched = write_pruned(root / "searched", pm, PlannerConfig(), {})
    results = run_retrain(none, searched, root / "none")
    assert results["steps"] == 0 and results["retrain_mode"] == "none"
    session, plans, _ = tiered_session(none, searched, None)
    again = session.trainer.evaluate(session.eval_loader("test"))
    assert again == results["test"]  # the model as written, scored once
