"""Held-out field importance (a field's embedding replaced by its held-out mean) against a per-sample
reference, and field allocation in DNIS / magnitude pruning."""

import dataclasses

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

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
from recdim.data.loader import Batch
from recdim.data.preprocess import prepare
from recdim.layout.field_budget import field_kept_counts
from recdim.layout.masks import kept_for_cr
from recdim.prune.derive import load_searched
from recdim.search.field_importance import (
    field_ablation_stats,
    search_split_field_importance,
)
from recdim.search.run import run_search
from recdim.train.distributed import destroy

ROWS = {"a": 7, "b": 5, "c": 4}
K, B = 4, 6


class TinyArch(nn.Module):
    """Logit = MLP over [dense, e_a, e_b, e_c] after a BatchNorm (eval mode makes samples independent)."""

    def __init__(self, ignore_c: bool = False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(3 * K)
        self.mlp = nn.Sequential(nn.Linear(1 + 3 * K, 8), nn.Tanh(), nn.Linear(8, 1))
        self.ignore_c = ignore_c

    def forward(self, dense, kt):
        e = kt.values()
        if self.ignore_c:
            e = torch.cat([e[:, : 2 * K], torch.zeros_like(e[:, 2 * K :])], dim=1)
        return self.mlp(torch.cat([dense, self.bn(e)], dim=1)).squeeze(1)


def make_batches(n=3):
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(100 + i)
        lengths = torch.randint(0, 3, (len(ROWS) * B,), generator=g)
        ids = torch.cat(
            [
                torch.randint(0, r, (int(lengths[j * B : (j + 1) * B].sum()),), generator=g)
                for j, r in enumerate(ROWS.values())
            ]
        )
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=list(ROWS), values=ids, lengths=lengths.int())
        batch = Batch(torch.randn(B, 1, generator=g), kjt, (torch.rand(B, generator=g) < 0.5).float())
        out.append((batch, B if i else B - 2))  # the first batch ends in 2 padding rows
    return out


def reference(arch, values, batches, pooling, rises=None):
    """Per sample, bag by bag: the pooled rows, their mean over valid samples, and the loss increases
    (each sample's into ``rises[f]`` when given)."""
    arch.eval()
    samples = []
    for batch, n_valid in batches:
        per = batch.sparse_features.to_dict()
        for s in range(n_valid):
            parts = []
            for f in ROWS:
                jt = per[f]
                lo, hi = int(jt.offsets()[s]), int(jt.offsets()[s + 1])
                acc = torch.zeros(K)
                for i in jt.values()[lo:hi].tolist():
                    acc = acc + values[f][i]
                if pooling == "mean" and hi > lo:
                    acc = acc / (hi - lo)
                parts.append(acc)
            samples.append((batch.dense_features[s : s + 1], parts, batch.labels[s : s + 1]))
    means = [torch.stack([p[j] for _, p, _ in samples]).mean(0) for j in range(len(ROWS))]

    def loss(dense, parts, label):
        kt = KeyedTensor(keys=list(ROWS), length_per_key=[K] * len(ROWS), values=torch.cat(parts)[None])
        return float(nn.functional.binary_cross_entropy_with_logits(arch(dense, kt), label))

    with torch.no_grad():
        base_each = [loss(*s) for s in samples]
        base = sum(base_each) / len(samples)
        out = {}
        for j, f in enumerate(ROWS):
            ablated = [(d, [means[j] if i == j else p[i] for i in range(len(ROWS))], y) for d, p, y in samples]
            each = [loss(*s) for s in ablated]
            out[f] = sum(each) / len(samples) - base
            if rises is not None:
                rises[f] = [a - b for a, b in zip(each, base_each)]
    return out


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_field_importance_matches_a_per_sample_reference(pooling):
    torch.manual_seed(0)
    arch = TinyArch()
    with torch.no_grad():
        arch.bn.running_mean.uniform_(-0.5, 0.5)
        arch.bn.running_var.uniform_(0.5, 2.0)
    values = {f: torch.randn(n, K) for f, n in ROWS.items()}
    batches = make_batches()
    got = field_ablation_stats(arch, values, batches, list(ROWS), pooling).mean
    assert arch.training  # its mode is restored
    want = reference(arch, values, batches, pooling)
    for f in ROWS:
        assert got[f] == pytest.approx(want[f], rel=1e-5, abs=1e-7)


def test_field_importance_standard_error_and_lower_bound():
    torch.manual_seed(1)
    arch = TinyArch()
    values = {f: torch.randn(n, K) for f, n in ROWS.items()}
    batches = make_batches()
    stats = field_ablation_stats(arch, values, batches, list(ROWS))
    rises = {}
    reference(arch, values, batches, "sum", rises)
    for f in ROWS:
        r = torch.tensor(rises[f], dtype=torch.float64)
        assert stats.n == r.numel()
        assert stats.mean[f] == pytest.approx(float(r.mean()), rel=1e-5, abs=1e-7)
        assert stats.stderr[f] == pytest.approx(float(r.std() / r.numel() ** 0.5), rel=1e-4, abs=1e-7)
        assert stats.lower_bound(2.0)[f] == pytest.approx(stats.mean[f] - 2.0 * stats.stderr[f])
    assert stats.lower_bound(0.0) == stats.mean


def test_a_field_the_arch_ignores_has_zero_importance_however_large():
    torch.manual_seed(0)
    values = {"a": torch.randn(7, K), "b": torch.randn(5, K), "c": torch.randn(4, K) * 1000.0}
    got = field_ablation_stats(TinyArch(ignore_c=True), values, make_batches(), list(ROWS))
    assert got.mean["c"] == 0.0 and got.stderr["c"] == 0.0 and got.mean["a"] != 0.0


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
        model=ModelConfig(arch="deepfm", embedding_dim=8, mlp=(8,)),
        train=TrainConfig(epochs=1, batch_size=256, device="cpu", progress=False, patience=0, seed=0, max_steps=8),
        search=SearchConfig(method="dnis"),
        prune=PruneConfig(crs=(2.0, 4.0)),
    )


@pytest.mark.parametrize("method, allocation", [("dnis", "method"), ("magnitude", "field")])
def test_field_allocation_gives_each_field_its_share(tmp_path, config, method, allocation):
    cfg = dataclasses.replace(
        config,
        search=dataclasses.replace(config.search, method=method),
        prune=dataclasses.replace(config.prune, allocation=allocation),
    )
    try:
        run_search(cfg, tmp_path / "search")
        m, searched = load_searched(tmp_path / "search")
        pruned = m.derive(searched, cfg.prune)
        values = searched.provider.effective_weights(searched.tables)
        importance = search_split_field_importance(searched, values, cfg.prune.field_confidence)
    finally:
        if dist.is_initialized():
            destroy()
    rows = {f: v.size(0) for f, v in values.items()}
    total = sum(v.numel() for v in values.values())
    for p, cr in zip(pruned, cfg.prune.crs):
        counts = field_kept_counts(importance, rows, 8, kept_for_cr(total, cr))
        assert {f: int(p.masks[f].sum()) for f in values} == counts
        assert p.info["allocation"] == "field" and p.info["field_importance"] == pytest.approx(importance)
        for f in values:  # within a field, the largest effective values stay
            v, keep = values[f].abs(), p.masks[f]
            if keep.any() and (~keep).any():
                assert v[keep].min() >= v[~keep].max()


def test_pep_field_allocation_ranks_survival_keys_within_each_field(tmp_path, config):
    from recdim.modules.threshold import survival_keys
    from recdim.modules.uniform import table_name

    cfg = dataclasses.replace(
        config,
        search=dataclasses.replace(config.search, method="pep"),
        prune=dataclasses.replace(config.prune, allocation="field"),
    )
    try:
        run_search(cfg, tmp_path / "search")
        m, searched = load_searched(tmp_path / "search")
        pruned = m.derive(searched, cfg.prune)
        eff = searched.provider.effective_weights(searched.tables)
        importance = search_split_field_importance(searched, eff, cfg.prune.field_confidence)
    finally:
        if dist.is_initialized():
            destroy()
    provider = searched.provider
    keys = {}
    for i, f in enumerate(searched.features):
        full = searched.tables[table_name(f)]
        v, s, _ = provider.thresholds.split_piece(i, full, (0, full.size(1)))
        keys[f] = survival_keys(v, s.to(v.dtype), provider.gate)
    rows = {f: k.size(0) for f, k in keys.items()}
    total = sum(k.numel() for k in keys.values())
    for p, cr in zip(pruned, cfg.prune.crs):
        want = field_kept_counts(importance, rows, 8, kept_for_cr(total, cr))
        assert {f: int(p.masks[f].sum()) for f in keys} == want
        assert p.info["init"] == "lottery ticket: initial values" and p.info["allocation"] == "field"
        for f, k in keys.items():
            keep = p.masks[f]
            if keep.any() and (~keep).any():
                assert k[keep].min() >= k[~keep].max()


def test_defaults_and_refusals():
    from recdim.search.autodim import AutoDimMethod
    from recdim.search.field_importance import field_allocation

    assert not field_allocation(PruneConfig(), "global") and field_allocation(PruneConfig(), "field")
    assert not field_allocation(PruneConfig(allocation="global"), "field")
    with pytest.raises(ValueError, match="'field' applies to DNIS / AutoSrh, magnitude pruning and PEP"):
        AutoDimMethod(Config()).derive(None, PruneConfig(allocation="field"))
    with pytest.raises(ValueError, match="prune.allocation must be"):
        PruneConfig(allocation="rows")
    with pytest.raises(ValueError, match="prune.field_confidence must be a finite number >= 0"):
        PruneConfig(field_confidence=-1.0)
