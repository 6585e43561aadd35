"""PEP search: the -150 trap, the working default prunes, snapshots at the right crossing, stop, save.

The sessions build the provider from a schema whose user and item fields are categorical, so both tables
take the pooled (EmbeddingBagCollection) path under DMP and the fused optimizer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recdim.config import Config, ModelConfig, TrainConfig
from recdim.config.pep import PEPConfig
from recdim.data.loader import EvalLoader, TrainLoader
from recdim.data.prepared import SparseColumn, SplitArrays
from recdim.data.schema import FieldKind, FieldSpec, LabelKind, Schema
from recdim.models.mf import MFArch
from recdim.models.rec_model import RecModel
from recdim.modules.table_init import init_tables, table_rows
from recdim.modules.threshold import DimensionThreshold, ThresholdEmbeddingProvider
from recdim.search.pep import CoupledL2, LinearRamp, PEPMethod, pressures, single_valued_features, table_pieces
from recdim.train.checkpoint import Checkpointer
from recdim.train.distributed import build_optimizer, init_distributed, shard_model
from recdim.train.resume import CheckpointHook
from recdim.train.trainer import Trainer

K = 8
USERS, ITEMS = 40, 30
FEATURES = ["user", "item"]


def ratings(n: int, seed: int) -> SplitArrays:
    """Rating = 3 + <u, v> for a rank-2 teacher, plus noise."""
    g = np.random.default_rng(seed)
    u_f, v_f = np.random.default_rng(100).normal(size=(USERS, 2)), np.random.default_rng(101).normal(size=(ITEMS, 2))
    u, i = g.integers(0, USERS, n), g.integers(0, ITEMS, n)
    y = (3.0 + (u_f[u] * v_f[i]).sum(1) + 0.1 * g.normal(size=n)).astype(np.float32)
    col = lambda x: SparseColumn(x.astype(np.int64), np.arange(n + 1, dtype=np.int64))  # noqa: E731
    return SplitArrays(y, np.zeros((n, 0), np.float32), {"user": col(u), "item": col(i)})


def session(
    pep: PEPConfig, train_cfg: TrainConfig, ckpt: Optional[Path] = None, item_kind: FieldKind = FieldKind.CATEGORICAL
) -> Tuple[PEPMethod, Any, TrainLoader, EvalLoader]:
    """A one-process DMP session (fused table optimizer) with the PEP method's provider and hooks, and
    the checkpoint hook (installed last, as ``open_session`` does) when ``ckpt`` is given."""
    ctx = init_distributed("cpu")
    cfg = Config(model=ModelConfig(arch="mf", embedding_dim=K), train=train_cfg)
    method = PEPMethod(cfg, pep)
    torch.manual_seed(0)
    schema = Schema(
        (FieldSpec("user", FieldKind.CATEGORICAL, USERS), FieldSpec("item", item_kind, ITEMS)), LabelKind.RATING
    )
    dataset = SimpleNamespace(schema=schema)
    factory = method.provider_factory(dataset, FEATURES)  # type: ignore[arg-type]
    provider = factory(cfg.model, {"user": USERS, "item": ITEMS}, False, torch.device("meta"))
    model = RecModel(provider, MFArch(FEATURES, K, 0, init_bias=3.0))
    dmp = shard_model(model, train_cfg, ctx)
    init_tables(dmp, train_cfg.seed, train_cfg.init_std)
    train = TrainLoader(ratings(2000, 1), FEATURES, 64)
    val = EvalLoader(ratings(400, 2), FEATURES, 400)
    trainer = Trainer(dmp, build_optimizer(dmp, train_cfg, ctx), LabelKind.RATING, train_cfg, ctx)
    sess = SimpleNamespace(cfg=cfg, ctx=ctx, model=model, dmp=dmp, trainer=trainer, train_loader=train, val_loader=val)
    trainer.hooks = method.hooks(sess)
    if ckpt is not None:
        trainer.hooks.append(CheckpointHook(Checkpointer(ckpt), every=train_cfg.checkpoint_every))
    return method, sess, train, val


def tiny_kjt() -> KeyedJaggedTensor:
    return KeyedJaggedTensor.from_lengths_sync(
        keys=FEATURES,
        values=torch.tensor([1, 2, 3, 0, 4, 5, 6]),
        lengths=torch.tensor([2, 0, 1, 1, 2, 1], dtype=torch.int32),
    )


def test_paper_init_has_exactly_zero_threshold_gradient() -> None:
    """The trap: at s = -150 float32 sigmoid and its gradient are exactly 0, so s never learns; only a
    coupled weight decay (the published code's Adam weight_decay) moves it, by ~lr per step."""
    assert torch.sigmoid(torch.tensor(-150.0)).item() == 0.0
    grads: Dict[float, torch.Tensor] = {}
    for init in (-150.0, -8.0):
        provider = ThresholdEmbeddingProvider({"user": USERS, "item": ITEMS}, K, DimensionThreshold(K, init))
        init_tables(provider, 0, 0.05)
        out = provider(tiny_kjt()).values()
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
        grads[init] = provider.thresholds.s.grad.clone()
        assert provider.ec.embeddings["t_user"].weight.grad.abs().sum() > 0
    assert torch.equal(grads[-150.0], torch.zeros(K))
    assert (grads[-8.0] != 0).all()  # the working init: g(s) ~ 3e-4, its gradient representable

    # the paper's variant: coupled L2 (= Adam weight decay) is the only gradient s gets
    cfg = PEPConfig.paper(granularity="dimension", weight_decay=1e-4)
    (pressure,) = pressures(cfg, planned_steps=0)
    assert isinstance(pressure, CoupledL2)
    provider = ThresholdEmbeddingProvider({"user": USERS, "item": ITEMS}, K, DimensionThreshold(K, cfg.threshold_init))
    init_tables(provider, 0, 0.05)
    pressure.attach(provider, 0)
    opt = torch.optim.Adam(provider.threshold_parameters(), lr=0.01)
    for _ in range(20):
        opt.zero_grad()
        provider(tiny_kjt()).values().sum().backward()
        torch.testing.assert_close(provider.thresholds.s.grad, 1e-4 * provider.thresholds.s.detach())
        opt.step()
    torch.testing.assert_close(provider.thresholds.s.detach(), torch.full((K,), -150.0 + 20 * 0.01), atol=1e-3, rtol=0)
    with pytest.raises(ValueError):
        PEPConfig.paper(granularity="feature_dimension")


def test_default_config_prunes_within_a_few_hundred_steps(tmp_path: Path) -> None:
    """Default PEP dynamics (feature-dimension thresholds in the table, init -8, ramp to 0 over the run)
    on a tiny MF problem: within 310 steps over 40% of the values are pruned, so budgets 0.75 and 0.6
    are snapshotted and the run stops at the second; save() writes what it found."""
    pep = PEPConfig(budgets=(0.75, 0.6))
    train_cfg = TrainConfig(epochs=10, batch_size=64, lr=1e-2, device="cpu", progress=False)
    method, sess, train, val = session(pep, train_cfg)
    provider = sess.model.provider
    assert sess.trainer.cfg.patience == 0  # early stopping is off for the search
    assert provider.ec is None and list(provider.ebc.embedding_bags) == ["t_user", "t_item"]  # the pooled path
    for _, name, local, (r0, r1), _ in table_pieces(provider):  # thresholds written after init_tables
        assert torch.equal(local[:, 1::2], torch.full((r1 - r0, K), pep.threshold_init))
        key = f"provider.{provider.table_key(name)}"
        assert key == f"provider.ebc.embedding_bags.{name}.weight"
        torch.testing.assert_close(
            local[:, 0::2], table_rows(0, key, (r0, r1), (0, 2 * K), 2 * K, train_cfg.init_std)[:, 0::2]
        )

    sess.trainer.fit(train, val)
    hook = method.hook
    nnz, total = hook.last_count
    assert total == (USERS + ITEMS) * K and nnz <= 0.6 * total
    assert [s.budget for s in hook.snapshots] == [0.75, 0.6]
    assert 0 < hook.snapshots[0].step < hook.snapshots[1].step == sess.trainer.global_step < 310

    summary = method.save(sess, tmp_path)
    index = json.loads((tmp_path / "snapshots.json").read_text())
    assert index["snapshots"][0]["budget"] == 0.75 and index["init"] == {"seed": 0, "std": train_cfg.init_std}
    masks = load_file(str(tmp_path / index["snapshots"][0]["file"]))
    assert masks["t_user"].dtype == torch.bool and masks["t_user"].shape == (USERS, K)
    assert sum(int(m.sum()) for m in masks.values()) == hook.snapshots[0].nnz
    thresholds = load_file(str(tmp_path / "thresholds.safetensors"))
    assert thresholds["t_item"].shape == (ITEMS, K) and thresholds["offset"].shape == (1,)
    assert summary["granularity"] == "feature_dimension"


CROSSING = PEPConfig(granularity="global", threshold_init=-6.0, ramp_steps=200, ramp_to=-1.0, budgets=(0.8, 0.5, 0.2))


def frozen_cfg(**kwargs: Any) -> TrainConfig:
    """Every learning rate 0: only the ramp moves the threshold."""
    return TrainConfig(
        epochs=20,
        batch_size=64,
        lr=0.0,
        embedding_optimizer="sgd",
        embedding_lr=0.0,
        device="cpu",
        progress=False,
        **kwargs,
    )


def expected_crossings(provider: ThresholdEmbeddingProvider) -> Tuple[Dict[float, int], Any]:
    """First step at or under each budget, and ``offset -> masks``, from the (fixed) initial table."""
    values = {name: local.detach().clone() for _, name, local, _, _ in table_pieces(provider)}
    total = sum(v.numel() for v in values.values())
    rate = (CROSSING.ramp_to - CROSSING.threshold_init) / 200

    def masks_at_offset(offset: float) -> Dict[str, torch.Tensor]:
        g = torch.sigmoid(torch.tensor(CROSSING.threshold_init) + torch.tensor(offset, dtype=torch.float32))
        return {k: v.abs() > g for k, v in values.items()}

    def masks_at(step: int) -> Dict[str, torch.Tensor]:
        return masks_at_offset(rate * step)

    expected, step = {}, 0
    for b in CROSSING.budgets:
        while sum(int(m.sum()) for m in masks_at(step).values()) > b * total:
            step += 1
        expected[b] = step
    return expected, masks_at_offset


def check_exact_snapshot(snap: Any, masks_at_offset: Any, rate: float) -> None:
    """A snapshot keeps exactly round(budget * total) values, the masks of its own offset, found between
    the ramp's offsets of the step before the crossing and of the crossing step."""
    got = snap.masks(K)
    for name, m in masks_at_offset(snap.offset).items():
        assert torch.equal(got[name], m)
    assert sum(int(m.sum()) for m in got.values()) == snap.nnz == round(snap.budget * snap.total)
    assert rate * (snap.step - 1) - 1e-6 <= snap.offset <= rate * snap.step + 1e-6


def test_snapshots_at_the_crossing_and_stop_at_last_budget(tmp_path: Path) -> None:
    """With every learning rate 0 only the ramp moves the (global) threshold, so the count at each step
    is known from the initial table: snapshots must land on the first step at or under each budget, with
    exactly the budget's count of values (the offset met between that step and the one before), and
    training must stop at the last one."""
    pep = CROSSING
    method, sess, train, val = session(pep, frozen_cfg())
    expected, masks_at_offset = expected_crossings(sess.model.provider)
    rate = (pep.ramp_to - pep.threshold_init) / 200
    assert 0 < expected[0.8] < expected[0.5] < expected[0.2] < 20 * len(train)

    sess.trainer.fit(train, val)
    hook = method.hook
    assert [(s.budget, s.step) for s in hook.snapshots] == [(b, expected[b]) for b in pep.budgets]
    assert sess.trainer.global_step == expected[0.2]  # stopped at the last budget
    assert hook.should_stop(sess.trainer)
    for snap in hook.snapshots:
        check_exact_snapshot(snap, masks_at_offset, rate)
        assert not snap.forced

    method.save(sess, tmp_path)
    index = json.loads((tmp_path / "snapshots.json").read_text())
    assert [(e["budget"], e["step"]) for e in index["snapshots"]] == [(b, expected[b]) for b in pep.budgets]
    for e in index["snapshots"]:
        saved = load_file(str(tmp_path / e["file"]))
        assert sum(int(m.sum()) for m in saved.values()) == e["nnz"] == round(e["budget"] * e["total"])
        assert rate * (e["step"] - 1) - 1e-6 <= e["threshold_offset"] <= rate * e["step"] + 1e-6
    thresholds = load_file(str(tmp_path / "thresholds.safetensors"))
    torch.testing.assert_close(thresholds["s"], torch.tensor([pep.threshold_init]))
    # thresholds are saved as the model ends training: the trainer restores its best validation epoch
    assert 0 < float(thresholds["offset"]) <= rate * expected[0.2] + 1e-6


def test_resume_keeps_snapshots_and_ramp(tmp_path: Path) -> None:
    """A run checkpointed after the second budget and resumed by a fresh session ends exactly like an
    uninterrupted one: same snapshot steps and masks, stop at the last budget."""
    _, sess, _, _ = session(CROSSING, frozen_cfg())
    expected, masks_at_offset = expected_crossings(sess.model.provider)
    rate = (CROSSING.ramp_to - CROSSING.threshold_init) / 200
    cut = expected[0.5] + 2
    first, sess, train, val = session(CROSSING, frozen_cfg(max_steps=cut, checkpoint_every=cut), ckpt=tmp_path / "ckpt")
    sess.trainer.fit(train, val)
    assert [s.budget for s in first.hook.snapshots] == [0.8, 0.5] and sess.trainer.global_step == cut

    resumed, sess, train, val = session(CROSSING, frozen_cfg(), ckpt=tmp_path / "ckpt")
    result = sess.trainer.fit(train, val)
    assert result.resumed_from_step == cut
    assert [(s.budget, s.step) for s in resumed.hook.snapshots] == [(b, expected[b]) for b in CROSSING.budgets]
    assert sess.trainer.global_step == expected[0.2]
    for snap in resumed.hook.snapshots:
        check_exact_snapshot(snap, masks_at_offset, rate)


def test_linear_ramp_offsets() -> None:
    provider = ThresholdEmbeddingProvider({"user": USERS, "item": ITEMS}, K, DimensionThreshold(K, -8.0))
    ramp = LinearRamp(0.5, start=10)
    ramp.attach(provider, 4)
    assert float(provider.threshold_offset) == 0.0
    ramp.after_step(provider, 14)
    assert float(provider.threshold_offset) == 2.0
    (p,) = pressures(PEPConfig(threshold_init=-10.0, ramp_to=-2.0), planned_steps=400)
    assert isinstance(p, LinearRamp) and p.rate == pytest.approx(0.02)
    assert pressures(PEPConfig(ramp_steps=100), planned_steps=400)[0].rate == pytest.approx(0.08)


def test_single_valued_features_from_schema() -> None:
    """Categorical and weighted fields hold one id per row (pooled path); multi-categorical ones are bags."""
    schema = Schema(
        (
            FieldSpec("user", FieldKind.CATEGORICAL, 5),
            FieldSpec("genres", FieldKind.MULTI_CATEGORICAL, 4),
            FieldSpec("price", FieldKind.WEIGHTED, 1),
            FieldSpec("age", FieldKind.DENSE),
        ),
        LabelKind.BINARY,
    )
    dataset = SimpleNamespace(schema=schema)
    assert single_valued_features(dataset, ["user", "genres", "price"]) == ["user", "price"]  # type: ignore[arg-type]
    assert single_valued_features(None, ["user", "genres"]) == []
    model = ModelConfig(arch="mf", embedding_dim=K)
    method = PEPMethod(Config(model=model), PEPConfig(granularity="dimension"))
    factory = method.provider_factory(dataset, ["user", "genres", "price"])  # type: ignore[arg-type]
    provider = factory(model, {"user": 5, "genres": 4, "price": 1}, True, torch.device("cpu"))
    assert provider.bag_features == ["user", "price"] and provider.seq_features == ["genres"]
    assert provider.is_weighted and not provider.ebc.is_weighted()  # weights multiply after the threshold


@pytest.mark.parametrize("item_kind", [FieldKind.CATEGORICAL, FieldKind.MULTI_CATEGORICAL])
@pytest.mark.parametrize("granularity", ["dimension", "feature_dimension"])
def test_lottery_rewind_regenerates_the_initial_values(granularity: str, item_kind: FieldKind) -> None:
    """``initial_values`` rebuilds V as initialised from the seed and each table's key, on either path."""
    from recdim.search.pep import initial_values

    pep = PEPConfig(granularity=granularity, budgets=(0.5,))
    train_cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-2, device="cpu", progress=False, init_std=0.07, seed=4)
    _, sess, _, _ = session(pep, train_cfg, item_kind=item_kind)
    provider = sess.model.provider
    assert ("item" in provider.seq_features) == (item_kind == FieldKind.MULTI_CATEGORICAL)
    cols = slice(0, None, 2) if granularity == "feature_dimension" else slice(None)

    def values() -> Dict[str, torch.Tensor]:
        return {name: local[:, cols].clone() for _, name, local, _, _ in table_pieces(provider)}

    initial = values()
    for f, v in initial_values(sess.cfg, provider, FEATURES).items():
        assert torch.equal(v, initial[f"t_{f}"])
    # a trained model rewinds to the same values
    sess.trainer.fit(sess.train_loader, sess.val_loader)
    assert not torch.equal(values()["t_user"], initial["t_user"])
    for f, v in initial_values(sess.cfg, provider, FEATURES).items():
        assert torch.equal(v, initial[f"t_{f}"])


def test_budget_training_did_not_reach_is_reached_at_the_end(tmp_path: Path) -> None:
    """Training stopped after the second budget: saving raises every threshold until the last budget holds
    exactly, marks that snapshot ``forced`` and leaves the model's own offset as training left it."""
    _, sess, _, _ = session(CROSSING, frozen_cfg())
    expected, masks_at_offset = expected_crossings(sess.model.provider)
    stop = expected[0.5] + 2
    method, sess, train, val = session(CROSSING, frozen_cfg(max_steps=stop))
    sess.trainer.fit(train, val)
    assert method.hook.pending == [0.2]
    trained_offset = float(sess.model.provider.threshold_offset)
    method.save(sess, tmp_path)
    last = method.hook.snapshots[-1]
    assert (last.budget, last.step, last.forced) == (0.2, stop, True) and not method.hook.pending
    assert last.nnz == round(0.2 * last.total) and last.offset > trained_offset
    for name, m in masks_at_offset(last.offset).items():
        assert torch.equal(last.masks(K)[name], m)
    assert float(sess.model.provider.threshold_offset) == trained_offset
    index = json.loads((tmp_path / "snapshots.json").read_text())
    assert [e["forced"] for e in index["snapshots"]] == [False, False, True]


def test_derive_names_a_rate_the_search_has_no_budget_for(tmp_path: Path) -> None:
    from recdim.config import PruneConfig

    (tmp_path / "snapshots.json").write_text(json.dumps({"snapshots": [{"budget": 0.5, "file": "x"}]}))
    method = PEPMethod(Config(), PEPConfig(budgets=(0.5,)))
    searched = SimpleNamespace(search_dir=tmp_path, features=FEATURES)
    with pytest.raises(ValueError, match=r"CR 20 needs PEP budget 0.05; the search kept budgets: 0.5 \(CR 2\)"):
        method.derive(searched, PruneConfig(crs=(20.0,)))  # type: ignore[arg-type]


def test_budgets_follow_the_prune_rates_by_default() -> None:
    from recdim.config import PruneConfig
    from recdim.search.pep import search_budgets

    assert search_budgets(PEPConfig(), (2.0, 4.0)) == (0.5, 0.25)
    assert search_budgets(PEPConfig(budgets=(0.3,)), (2.0,)) == (0.3,)
    assert PEPMethod(Config(prune=PruneConfig(crs=(8.0,)))).budgets == (0.125,)
    with pytest.raises(ValueError, match="PEP needs budgets"):
        search_budgets(PEPConfig(), ())


def test_incremental_count_snapshots_at_the_full_counts_steps() -> None:
    """The default search counts survivors incrementally (KeptCounter: fused row-wise Adagrad, thresholds in
    the table); the same run counting every table at every check gives the same count after every step,
    so the same snapshots at the same steps."""
    from recdim.search.kept_counter import KeptCounter

    runs = []
    for incremental in (True, False):
        pep = PEPConfig(budgets=(0.75, 0.6), check_lookahead=0.0)
        train_cfg = TrainConfig(epochs=10, batch_size=64, lr=1e-2, device="cpu", progress=False)
        method, sess, train, val = session(pep, train_cfg)
        hook = method.hook
        if not incremental:
            hook._counter = False  # full counts
        counts = []
        check = hook.check
        hook.check = lambda step: (check(step), counts.append((step, hook.last_count)))[0]  # type: ignore[method-assign]
        sess.trainer.fit(train, val)
        assert isinstance(hook.__dict__.get("_counter"), KeptCounter) == incremental
        runs.append((counts, [(s.budget, s.step, s.nnz, s.offset) for s in hook.snapshots], hook.snapshots))
    (counts, snaps, kept), (full_counts, full_snaps, full_kept) = runs
    assert counts == full_counts and len(counts) > 100
    assert snaps == full_snaps and [s[0] for s in snaps] == [0.75, 0.6]
    for a, b in zip(kept, full_kept):
        for name, m in a.masks(K).items():
            assert torch.equal(m, b.masks(K)[name])


def test_lookahead_counts_rarely_and_snapshots_where_every_step_does() -> None:
    """The default schedule (counts far apart while no budget is near) takes a fraction of the counts of a
    count after every step and keeps the same budgets at the same steps, each at exactly its count."""
    runs = []
    for lookahead in (0.5, 0.0):
        pep = PEPConfig(budgets=(0.75, 0.6, 0.5), check_lookahead=lookahead)
        train_cfg = TrainConfig(epochs=10, batch_size=64, lr=1e-2, device="cpu", progress=False)
        method, sess, train, val = session(pep, train_cfg)
        hook = method.hook
        steps: List[int] = []
        check = hook.check
        hook.check = lambda step: (steps.append(step), check(step))[1]  # type: ignore[method-assign]
        sess.trainer.fit(train, val)
        runs.append((steps, hook.snapshots))
    (steps, snaps), (every_steps, every_snaps) = runs
    assert len(steps) < len(every_steps) / 3
    assert [(s.budget, s.step) for s in snaps] == [(s.budget, s.step) for s in every_snaps]
    for s in snaps:
        assert s.nnz == round(s.budget * s.total) and not s.forced


def test_sampled_estimates_skip_counts_far_from_a_budget_and_keep_the_snapshots() -> None:
    """With the sampled estimate switched on (every table, half of each table's rows), due counts far from
    a budget are answered by the estimate; the budgets are still caught at the steps of a count after
    every step, each at exactly its count."""
    runs = []
    for sample in (0.5, 0.0):
        pep = PEPConfig(budgets=(0.75, 0.6, 0.5), check_lookahead=0.0, count_sample=sample, count_sample_above=0)
        train_cfg = TrainConfig(epochs=10, batch_size=64, lr=1e-2, device="cpu", progress=False)
        method, sess, train, val = session(pep, train_cfg)
        hook = method.hook
        assert (hook.sampler is not None) == (sample > 0)
        steps: List[int] = []
        check = hook.check
        hook.check = lambda step: (steps.append(step), check(step))[1]  # type: ignore[method-assign]
        sess.trainer.fit(train, val)
        runs.append((steps, hook.snapshots, hook.estimates))
    (steps, snaps, estimates), (every_steps, every_snaps, _) = runs
    assert estimates > 0 and len(steps) < len(every_steps)
    assert [(s.budget, s.step) for s in snaps] == [(s.budget, s.step) for s in every_snaps]
    for a, b in zip(snaps, every_snaps):
        assert a.nnz == b.nnz and a.offset == b.offset and not a.forced


def test_snapshot_bisection_counts_alike_by_kept_keys_frozen_keys_and_full_counts(monkeypatch: Any) -> None:
    """The snapshot's bisection counts through the kept keys (incremental counter), keys computed once for
    the bisection (FrozenKeys) or a pass through the gate per probe: the same offsets, counts and masks."""
    from recdim.search import pep as pep_module

    runs = []
    build = pep_module.FrozenKeys.build
    for path in ("kept", "frozen", "full"):
        pep = PEPConfig(budgets=(0.75, 0.6), check_lookahead=0.0)
        train_cfg = TrainConfig(epochs=10, batch_size=64, lr=1e-2, device="cpu", progress=False)
        method, sess, train, val = session(pep, train_cfg)
        hook = method.hook
        built: List[bool] = []

        def counted_build(provider: Any, _path: str = path) -> Any:
            keys = None if _path == "full" else build(provider)
            built.append(keys is not None)
            return keys

        monkeypatch.setattr(pep_module.FrozenKeys, "build", staticmethod(counted_build))
        if path != "kept":
            hook._counter = False  # full counts between snapshots: the bisection cannot use kept keys
        sess.trainer.fit(train, val)
        assert built == ([] if path == "kept" else [path == "frozen"] * 2)
        runs.append(hook.snapshots)
    kept, frozen, full = runs
    for a, b, c in zip(kept, frozen, full):
        assert (
            (a.budget, a.step, a.nnz, a.offset)
            == (b.budget, b.step, b.nnz, b.offset)
            == (c.budget, c.step, c.nnz, c.offset)
        )
        for name, m in a.masks(K).items():
            assert torch.equal(m, b.masks(K)[name]) and torch.equal(m, c.masks(K)[name])
