"""AutoDim search: temperature schedule, equal-weight pre-training, architecture steps only every f
validation steps, argmax derivation and the saved architecture."""

from __future__ import annotations

import json
from pathlib import Path
from types import MethodType, SimpleNamespace
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from recdim.config import Config, ModelConfig, TrainConfig
from recdim.config.autodim import AutoDimConfig
from recdim.data.loader import EvalLoader, TrainLoader
from recdim.data.prepared import SparseColumn, SplitArrays
from recdim.data.schema import LabelKind
from recdim.models.mf import MFArch
from recdim.models.rec_model import RecModel
from recdim.modules.candidate_dims import (
    CandidateDimsProvider,
    CandidateTransform,
    EqualMixing,
    GumbelSoftmaxMixing,
    SeparateTables,
    ZeroPad,
)
from recdim.modules.table_init import init_tables
from recdim.search.autodim import AutoDimHook, AutoDimMethod, build_candidate_provider, gumbel_temperature
from recdim.search.bilevel import BilevelConfig, BilevelHook
from recdim.train.checkpoint import Checkpointer
from recdim.train.distributed import build_optimizer, init_distributed, shard_model
from recdim.train.hooks import StepHook
from recdim.train.resume import CheckpointHook
from recdim.train.trainer import Trainer

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


class Recorder(StepHook):
    """Records, after each step, the mixing that step used or the state the AutoDim hook left."""

    def __init__(self, provider: CandidateDimsProvider) -> None:
        self.provider = provider
        self.rows: Dict[int, Dict[str, Any]] = {}

    def after_step(self, trainer: Any, step: int, batch: Any) -> None:
        m = self.provider.mixing
        self.rows[step] = {
            "mixing": type(m).__name__,
            "tau": getattr(m, "tau", None),
            "alpha": [a.detach().clone() for a in self.provider.alpha],
            "grad": [None if a.grad is None else a.grad.clone() for a in self.provider.alpha],
        }


def test_tau_schedule() -> None:
    assert gumbel_temperature(0) == 1.0
    assert gumbel_temperature(10_000) == pytest.approx(0.5)
    assert gumbel_temperature(19_800) == pytest.approx(0.01)
    assert gumbel_temperature(10**6) == 0.01
    assert gumbel_temperature(10, start=2.0, decay=0.1, floor=0.5) == pytest.approx(1.0)


ADC = AutoDimConfig(pretrain_steps=40, update_every=5, arch_lr=0.05, tau_decay=1e-3)


def session(train_cfg: TrainConfig, ckpt: Optional[Path] = None) -> Tuple[AutoDimMethod, Any, TrainLoader, EvalLoader]:
    """A one-process DMP session with the AutoDim method's provider and hooks (+ checkpoints)."""
    ctx = init_distributed("cpu")
    cfg = Config(model=ModelConfig(arch="mf", embedding_dim=K), train=train_cfg)
    method = AutoDimMethod(cfg, ADC)
    torch.manual_seed(0)
    provider = method.provider_factory(None, FEATURES)(
        cfg.model, {"user": USERS, "item": ITEMS}, False, torch.device("meta")
    )  # type: ignore[arg-type]
    assert isinstance(provider, CandidateDimsProvider) and provider.dims == {"user": (4, 8, 16), "item": (4, 8, 16)}
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
        splits={"search": val},  # architecture steps read the search split
        dataset=SimpleNamespace(schema=SimpleNamespace(is_weighted=False)),
    )
    trainer.hooks = method.hooks(sess)
    if ckpt is not None:
        trainer.hooks.append(CheckpointHook(Checkpointer(ckpt), every=train_cfg.checkpoint_every))
    return method, sess, TrainLoader(ratings(2000, 1), FEATURES, 64), EvalLoader(val, FEATURES, 400)


def test_pretrain_then_search_on_the_search_split_every_f(tmp_path: Path) -> None:
    """40 pre-training steps with equal weights (alpha untouched even though the training loss reaches
    it), then Gumbel-softmax with tau(t) and an architecture step exactly when t % 5 == 0."""
    method, sess, train, val = session(
        TrainConfig(epochs=3, batch_size=64, lr=1e-2, patience=0, device="cpu", progress=False)
    )
    trainer, provider = sess.trainer, sess.model.provider
    used, left = Recorder(provider), Recorder(provider)
    trainer.hooks = [used] + trainer.hooks + [left]
    trainer.fit(train, val)

    steps = trainer.global_step
    assert steps == 3 * len(train) == 93
    zeros = [torch.zeros(3), torch.zeros(3)]
    for t in range(1, steps + 1):
        searching = t > 40
        assert used.rows[t]["mixing"] == ("GumbelSoftmaxMixing" if searching else "EqualMixing"), t
        if not searching:
            assert all(torch.equal(a, z) for a, z in zip(left.rows[t]["alpha"], zeros)), t
            assert all(torch.equal(g, z) for g, z in zip(used.rows[t]["grad"], zeros)), t  # equal mixing: zero gradient
            continue
        assert used.rows[t]["tau"] == pytest.approx(gumbel_temperature(t - 41, 1.0, 1e-3, 0.01)), t
        moved = any(not torch.equal(a, b) for a, b in zip(left.rows[t]["alpha"], left.rows[t - 1]["alpha"]))
        assert moved == ((t - 40) % 5 == 0), t
        assert any(g.abs().sum() > 0 for g in used.rows[t]["grad"]), t  # the training loss reaches alpha
    hook = method.hook
    assert hook.search_start == 40 and hook.bilevel.arch_steps == (steps - 40) // 5

    alpha = [a.detach() for a in provider.alpha]
    expected = {f: provider.dims[f][int(torch.argmax(a))] for f, a in zip(FEATURES, alpha)}
    assert provider.derive_dims() == expected
    summary = method.save(sess, tmp_path)
    saved = json.loads((tmp_path / "autodim_dims.json").read_text())
    assert saved["dims"] == expected == summary["dims"]
    assert saved["candidates"] == {"user": [4, 8, 16], "item": [4, 8, 16]}
    tensors = load_file(str(tmp_path / "autodim_weights.safetensors"))
    torch.testing.assert_close(tensors["alpha.user"], alpha[0])
    torch.testing.assert_close(tensors["softmax.item"], torch.softmax(alpha[1], 0))


def test_resume_continues_the_search(tmp_path: Path) -> None:
    """Checkpointed 12 steps into the search and resumed by a fresh session: the search is not restarted
    (same start, Gumbel mixing, temperature and architecture-step count carry on)."""
    cfg = dict(epochs=3, batch_size=64, lr=1e-2, patience=0, device="cpu", progress=False)
    first, sess, train, val = session(TrainConfig(max_steps=52, checkpoint_every=52, **cfg), ckpt=tmp_path / "ckpt")
    sess.trainer.fit(train, val)
    assert first.hook.search_start == 40 and first.hook.bilevel.arch_steps == 2

    resumed, sess, train, val = session(TrainConfig(**cfg), ckpt=tmp_path / "ckpt")
    seen = Recorder(sess.model.provider)  # after the AutoDim hook: stateful hooks are keyed by position
    sess.trainer.hooks.insert(1, seen)
    assert sess.trainer.fit(train, val).resumed_from_step == 52
    hook = resumed.hook
    assert hook.search_start == 40 and hook.bilevel.arch_steps == (93 - 40) // 5
    assert seen.rows[53]["mixing"] == "GumbelSoftmaxMixing"
    assert seen.rows[53]["tau"] == pytest.approx(gumbel_temperature(13, 1.0, 1e-3, 0.01))


def test_search_trajectory_matches_the_per_candidate_mixture() -> None:
    """The default search (shared prefixes, Linear + BatchNorm) run with the fast mixture and with every
    candidate transformed then summed: the same alpha after 20 search steps (4 architecture steps), the
    same BatchNorm running variances and the same derived dimensions (float32, atol 1e-5).

    Under training-mode BatchNorm the Linear bias has an exactly zero gradient; the per-candidate run gets
    float32 noise there instead, which Adam turns into steps of the bias (and of the running means that
    track it), so the running means are not compared."""
    cfg = TrainConfig(max_steps=60, epochs=3, batch_size=64, lr=1e-2, patience=0, device="cpu", progress=False)
    runs = []
    for per_candidate in (False, True):
        method, sess, train, val = session(cfg)
        provider = sess.model.provider
        if per_candidate:
            for t in provider.transforms:
                t.mix = MethodType(CandidateTransform.mix, t)  # type: ignore[method-assign]
        torch.manual_seed(1)  # the same Gumbel noise in both runs
        sess.trainer.fit(train, val)
        assert method.hook is not None and method.hook.bilevel.arch_steps == 4
        variances = [t.bn.running_var.clone() for t in provider.transforms]
        runs.append(([a.detach().clone() for a in provider.alpha], variances, provider.derive_dims()))
    (alpha_fast, var_fast, dims_fast), (alpha_ref, var_ref, dims_ref) = runs
    assert not all(torch.equal(a, torch.zeros_like(a)) for a in alpha_ref)
    for a, b in zip(alpha_fast, alpha_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(var_fast, var_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert dims_fast == dims_ref


class FakeTrainer:
    def __init__(self) -> None:
        self.epoch, self.global_step = 0, 0


def test_epoch_pretraining_switches_at_epoch_end() -> None:
    provider = CandidateDimsProvider({"user": USERS, "item": ITEMS}, K, storage=SeparateTables(), transform=ZeroPad)
    loader = TrainLoader(ratings(64, 3), FEATURES, 32)
    hook = AutoDimHook(
        provider, BilevelHook(provider, loader, BilevelConfig(update_every=10**6)), pretrain_steps=5, pretrain_epochs=1
    )
    trainer = FakeTrainer()
    hook.on_train_start(trainer)
    assert isinstance(provider.mixing, EqualMixing)
    for step in range(1, 9):
        trainer.global_step = step
        hook.after_step(trainer, step, None)
    assert not hook.searching  # steps passed, epoch 0 not over
    hook.on_epoch_end(trainer, 0, {})
    assert hook.search_start == 8 and isinstance(provider.mixing, GumbelSoftmaxMixing)
    trainer.epoch = 1
    for step in range(9, 12):
        hook.after_step(trainer, step, None)
    assert provider.mixing.tau == pytest.approx(gumbel_temperature(3))
    assert hook.state()["autodim"]["search_start"] == 8

    no_pretrain = AutoDimHook(provider, BilevelHook(provider, loader, BilevelConfig()))
    no_pretrain.on_train_start(FakeTrainer())
    assert no_pretrain.search_start == 0
    with pytest.raises(ValueError):
        AutoDimHook(provider, BilevelHook(provider, loader, BilevelConfig(warm_start_epochs=1)))


def test_config_variants_compose() -> None:
    model = ModelConfig(arch="mf", embedding_dim=8)
    p = build_candidate_provider(
        AutoDimConfig(storage="separate", transform="zero_pad"),
        model,
        {"user": USERS, "item": ITEMS},
        False,
        torch.device("cpu"),
    )
    assert isinstance(p.storage, SeparateTables) and all(isinstance(t, ZeroPad) for t in p.transforms)
    assert [t.name for t in p.tables] == ["t_user_d4", "t_user_d8", "t_item_d4", "t_item_d8"]
    with pytest.raises(ValueError):
        AutoDimConfig(candidates=(4, 6))
