"""AutoDim-s (the searched soft mixture scored as it is) and the AutoDim ablation settings: what the soft
model stores, the mixing of the validation-selected epoch, the pipeline cell, second-order architecture
gradients and a fixed temperature."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

from recdim.config import Config, ModelConfig, TrainConfig, load
from recdim.config.autodim import AutoDimConfig
from recdim.data.loader import EvalLoader, TrainLoader
from recdim.data.prepared import SparseColumn, SplitArrays
from recdim.data.preprocess import prepare
from recdim.data.schema import LabelKind
from recdim.models.mf import MFArch
from recdim.models.rec_model import RecModel
from recdim.modules.candidate_dims import (
    CandidateDimsProvider,
    EqualMixing,
    GumbelSoftmaxMixing,
    SeparateTables,
    ZeroPad,
)
from recdim.modules.table_init import init_tables
from recdim.search.autodim import (
    AutoDimSoftHook,
    AutoDimSoftMethod,
    UnrolledBilevelHook,
    fixed_gumbel_noise,
    gumbel_temperature,
    mixing_for,
    soft_model_params,
)
from recdim.search.bilevel import BilevelHook
from recdim.search.dnis import unrolled_arch_grad
from recdim.search.method import create
from recdim.train.distributed import build_optimizer, init_distributed, shard_model
from recdim.train.hooks import StepHook
from recdim.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
K = 16
USERS, ITEMS = 40, 30
FEATURES = ["user", "item"]


def ratings(n: int, seed: int) -> SplitArrays:
    g = np.random.default_rng(seed)
    u_f, v_f = np.random.default_rng(100).normal(size=(USERS, 2)), np.random.default_rng(101).normal(size=(ITEMS, 2))
    u, i = g.integers(0, USERS, n), g.integers(0, ITEMS, n)
    y = (3.0 + (u_f[u] * v_f[i]).sum(1) + 0.1 * g.normal(size=n)).astype(np.float32)
    col = lambda x: SparseColumn(x.astype(np.int64), np.arange(n + 1, dtype=np.int64))  # noqa: E731
    return SplitArrays(y, np.zeros((n, 0), np.float32), {"user": col(u), "item": col(i)})


def mf_session(method_name: str, adc: AutoDimConfig, train_cfg: TrainConfig) -> SimpleNamespace:
    """A one-process DMP session of MF on planted ratings with the method's provider and hooks."""
    ctx = init_distributed("cpu")
    cfg = Config(model=ModelConfig(arch="mf", embedding_dim=K), train=train_cfg)
    method = create(method_name, cfg)
    method.autodim = adc
    torch.manual_seed(0)
    provider = method.provider_factory(None, FEATURES)(
        cfg.model, {"user": USERS, "item": ITEMS}, False, torch.device("meta")
    )  # type: ignore[arg-type]
    model = RecModel(provider, MFArch(FEATURES, K, 0, init_bias=3.0))
    dmp = shard_model(model, train_cfg, ctx)
    init_tables(dmp, 0, train_cfg.init_std)
    trainer = Trainer(dmp, build_optimizer(dmp, train_cfg, ctx), LabelKind.RATING, train_cfg, ctx)
    val = ratings(400, 2)
    sess = SimpleNamespace(
        cfg=cfg,
        ctx=ctx,
        model=model,
        trainer=trainer,
        features=FEATURES,
        splits={"search": ratings(400, 3)},
        dataset=SimpleNamespace(schema=SimpleNamespace(is_weighted=False)),
        method=method,
        train=TrainLoader(ratings(1200, 1), FEATURES, 64),
        val=EvalLoader(val, FEATURES, 400),
    )
    trainer.hooks = method.hooks(sess)
    return sess


def test_soft_model_params_count_every_stored_value() -> None:
    shared = CandidateDimsProvider({"user": USERS, "item": ITEMS}, K)  # candidates 4, 8, 16; Linear + BN
    rows = USERS + ITEMS
    per_field = K * (4 + 8 + 16) + 3 * K  # Linear weights of the real K x d_j blocks, biases
    assert soft_model_params(shared) == {
        "tables": rows * 16,  # one table of the largest candidate
        "transforms": 2 * per_field,
        "normalisation": 2 * 2 * 3 * K,  # running mean and variance of J * K channels
        "alpha": 2 * 3,
        "total": rows * 16 + 2 * per_field + 12 * K + 6,
    }
    separate = CandidateDimsProvider({"user": USERS, "item": ITEMS}, K, storage=SeparateTables(), transform=ZeroPad)
    assert soft_model_params(separate) == {
        "tables": rows * (4 + 8 + 16),
        "transforms": 0,
        "normalisation": 0,
        "alpha": 6,
        "total": rows * 28 + 6,
    }


class Best(StepHook):
    """Records, at each epoch end, the mixing that scored that epoch's validation."""

    def __init__(self, provider: CandidateDimsProvider) -> None:
        self.provider, self.taus = provider, []  # type: ignore[var-annotated]

    def on_epoch_end(self, trainer: Any, epoch: int, val_metrics: Dict[str, float]) -> None:
        m = self.provider.mixing
        self.taus.append(m.tau if isinstance(m, GumbelSoftmaxMixing) else 0.0)


def test_soft_hook_keeps_the_mixing_of_the_selected_epoch() -> None:
    """Pre-training ends after epoch 0's validation (scored with equal weights); the hook's
    ``selected_tau`` is the mixing of the epoch the trainer restores, and the restored state scored with it
    gives back that epoch's validation metrics exactly."""
    adc = AutoDimConfig(pretrain_epochs=1, update_every=2, arch_lr=0.05, tau_decay=0.02)
    train_cfg = TrainConfig(epochs=3, batch_size=64, lr=1e-2, patience=0, device="cpu", progress=False)
    sess = mf_session("autodim_s", adc, train_cfg)
    hook = sess.method.hook
    assert isinstance(hook, AutoDimSoftHook) and hook.selected_tau is None
    seen = Best(sess.model.provider)
    sess.trainer.hooks.insert(0, seen)
    fit = sess.trainer.fit(sess.train, sess.val)
    assert seen.taus[0] == 0.0 and all(t > 0 for t in seen.taus[1:])  # epoch 0: equal weights
    assert hook.selected_tau == seen.taus[fit.best_epoch]
    sess.model.provider.mixing = mixing_for(hook.selected_tau)
    again = sess.trainer.evaluate(sess.val)
    assert again == pytest.approx(fit.best_val, abs=1e-6)
    assert hook.state()["autodim"]["selected_tau"] == hook.selected_tau
    state = hook.state_dict()
    hook.selected_tau = None
    hook.load_state_dict(state)
    assert hook.selected_tau == seen.taus[fit.best_epoch]
    assert isinstance(mixing_for(0.0), EqualMixing) and mixing_for(0.5).tau == 0.5


def test_fixed_temperature_without_annealing() -> None:
    """``tau_decay = 0`` is the no-annealing ablation: tau stays ``tau_start`` for the whole search."""
    adc = AutoDimConfig(update_every=3, tau_start=0.5, tau_decay=0.0)
    sess = mf_session("autodim", adc, TrainConfig(max_steps=20, batch_size=64, device="cpu", progress=False))
    sess.trainer.fit(sess.train, sess.val)
    assert sess.method.hook.mixing.tau == 0.5 and gumbel_temperature(10**6, 0.5, 0.0, 0.01) == 0.5


def test_second_order_config_builds_the_unrolled_hook() -> None:
    with pytest.raises(ValueError):
        AutoDimConfig(fd_epsilon=0.0)
    adc = AutoDimConfig(update_every=2, second_order=True, fd_epsilon=0.02)
    sess = mf_session("autodim", adc, TrainConfig(max_steps=8, batch_size=64, lr=0.01, device="cpu", progress=False))
    bilevel = sess.method.hook.bilevel
    assert isinstance(bilevel, UnrolledBilevelHook) and (bilevel.lr, bilevel.fd_epsilon) == (0.01, 0.02)
    before = [a.detach().clone() for a in sess.model.provider.alpha]
    sess.trainer.fit(sess.train, sess.val)
    assert bilevel.arch_steps == 4
    assert any(not torch.equal(a, b) for a, b in zip(sess.model.provider.alpha, before))
    first = mf_session("autodim", AutoDimConfig(), TrainConfig(device="cpu", progress=False))
    assert type(first.method.hook.bilevel) is BilevelHook


def test_fixed_gumbel_noise_replays_one_draw() -> None:
    provider = CandidateDimsProvider({"user": USERS, "item": ITEMS}, K)
    provider.mixing = GumbelSoftmaxMixing(1.0)
    alpha = torch.zeros(2, 3)
    with fixed_gumbel_noise(provider):
        a, b = provider.mixing.noise([0, 1], alpha), provider.mixing.noise([0, 1], alpha)
        assert torch.equal(a, b)
    assert not torch.equal(provider.mixing.noise([0, 1], alpha), a)
    provider.mixing = EqualMixing()
    with fixed_gumbel_noise(provider):  # nothing to fix
        pass


def test_unrolled_gradient_is_darts_with_one_noise_draw() -> None:
    """The hook's alpha gradient equals :func:`unrolled_arch_grad` over the transforms and the arch, with
    the same Gumbel draw in every pass; a zero inner learning rate leaves the first-order gradient."""
    train_cfg = TrainConfig(max_steps=1, batch_size=64, lr=0.05, device="cpu", progress=False)
    sess = mf_session("autodim", AutoDimConfig(second_order=True), train_cfg)
    provider, trainer = sess.model.provider, sess.trainer
    bilevel: UnrolledBilevelHook = sess.method.hook.bilevel
    provider.mixing = GumbelSoftmaxMixing(0.7)
    sess.model.train()
    train_batch = next(iter(sess.train.epoch(0)))
    val_batch = bilevel.next_val_batch()
    bilevel._train_batch = train_batch
    noise = {0: torch.tensor([0.3, -1.0, 0.5])}
    draws: List[int] = []

    def counted(features: Any, alpha: torch.Tensor) -> torch.Tensor:
        draws.append(1)
        return torch.stack([noise[0] * (1 + i) for i in features])

    provider.mixing.noise = counted
    bilevel.arch_gradient(trainer, val_batch)  # (training-mode BatchNorm: batch statistics in every pass)
    got = [p.grad.clone() for p in bilevel.params]
    assert len(draws) == 1  # one draw per group (one group: both features share candidates)
    dense = [p for n, p in trainer.model.named_parameters() if "transforms" in n or "arch" in n]
    dense = [p for p in dense if p.requires_grad and all(p is not a for a in bilevel.params)]
    with fixed_gumbel_noise(provider), provider.frozen_tables():
        want = unrolled_arch_grad(
            bilevel.params, dense, lambda: trainer.loss(train_batch), lambda: trainer.loss(val_batch), 0.05
        )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=2e-4, rtol=2e-3)
    bilevel.lr = 0.0
    bilevel.arch_gradient(trainer, val_batch)
    with provider.frozen_tables():
        first = torch.autograd.grad(trainer.loss(val_batch), bilevel.params)
    for p, f in zip(bilevel.params, first):
        torch.testing.assert_close(p.grad, f, atol=1e-6, rtol=1e-5)
    assert any(not torch.allclose(g, f, atol=1e-6) for g, f in zip(got, first))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("soft") / "data"
    cfg = load(
        str(ROOT / "configs" / "compare_small.toml"),
        (f"prepare.output={out}", "prepare.synthetic.rows=3000", "prepare.synthetic.cardinalities=[100, 50, 20, 10]"),
    )
    prepare(cfg.prepare)
    return out


def small_cfg(data: Path, *sets: str) -> Config:
    return load(
        str(ROOT / "configs" / "compare_small.toml"),
        (
            f"prepare.output={data}",
            "prepare.synthetic.cardinalities=[100, 50, 20, 10]",
            "train.epochs=2",
            "train.max_steps=30",
            "search.split.fraction=0.2",
            "search.autodim.update_every=2",
            "search.autodim.tau_decay=0.01",
            *sets,
        ),
    )


def test_run_experiment_scores_the_soft_mixture_as_searched(data: Path, tmp_path: Path) -> None:
    """``run_experiment(cfg, "autodim_s", ...)``: no pruning, no retraining; val is the search's selected
    epoch's validation, test is read from the test split, bytes are what the soft model stores (all
    candidates and transforms), so the reported CR is below 1 at any budget."""
    from recdim.pipeline import run_experiment
    from recdim.prune.derive import load_searched

    cfg = small_cfg(data)
    out = tmp_path / "cell"
    cell = run_experiment(cfg, "autodim_s", 4.0, 0, out)
    assert not (out / "pruned").exists() and cell["split"] == {"val": "val", "test": "test"}
    search = json.loads((out / "search" / "results.json").read_text())
    saved = json.loads((out / "retrain" / "results.json").read_text())
    assert cell["val"] == pytest.approx(search["val"]) and cell["val"] == saved["val"]
    assert cell["test"] == saved["test"] and set(cell["test"]) >= {"auc", "logloss"}
    assert saved["steps"] == 0 and search["search"]["method"] == "autodim_s"

    _, searched = load_searched(out / "search")  # the soft model, rebuilt independently
    stored = soft_model_params(searched.provider)
    assert cell["params"] == stored["total"] and cell["bytes"] == 4 * stored["total"]
    rows = {f: searched.dataset.schema[f].num_embeddings for f in searched.features}
    assert stored["tables"] == sum(rows.values()) * 16 and stored["transforms"] > 0
    assert cell["cr"] == pytest.approx(sum(rows.values()) * 16 / stored["total"]) and cell["cr"] < 1
    assert cell["target_cr"] == 4.0
    info = cell["dims"]
    assert info["selected_tau"] == search["search"]["autodim"]["selected_tau"]
    assert info["argmax_dims"] == search["search"]["autodim"]["dims"]  # recorded, not applied
    assert all(d == 16 for d in info["stored_dims"].values())

    with pytest.raises(ValueError, match="no pruned models"):
        AutoDimSoftMethod(cfg).derive(searched, cfg.prune)
    autodim = tmp_path / "plain"
    from recdim.search.run import run_search

    run_search(cfg, autodim, method="autodim")
    with pytest.raises(ValueError, match="not a finished autodim_s search"):
        AutoDimSoftMethod(cfg).evaluate_searched(autodim)
