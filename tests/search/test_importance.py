"""The held-out (Fisher / Optimal-Brain-Damage) importance score: its plain lookup against the provider, its
scores against a per-sample autograd reference, and its use by DNIS / magnitude pruning."""

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
from recdim.data.loader import Batch, EvalLoader
from recdim.data.preprocess import prepare
from recdim.layout.masks import kept_for_cr, mask_stats
from recdim.modules.uniform import UniformEmbeddingProvider, table_name
from recdim.prune.derive import load_searched
from recdim.search.importance import fisher_scores, pooled_lookup, search_split_scores
from recdim.search.run import run_search
from recdim.train.distributed import destroy

ROWS = {"a": 7, "b": 5}
K, B = 4, 6


def batch_kjt(seed: int, weighted: bool = False, max_len: int = 3) -> KeyedJaggedTensor:
    """Bags of 0..max_len ids per (feature, sample), repeated ids included."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (len(ROWS) * B,), generator=g)
    ids = torch.cat(
        [
            torch.randint(0, n, (int(lengths[i * B : (i + 1) * B].sum()),), generator=g)
            for i, n in enumerate(ROWS.values())
        ]
    )
    weights = torch.rand(ids.numel(), generator=g) + 0.5 if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(keys=list(ROWS), values=ids, lengths=lengths.int(), weights=weights)


# The unsharded EmbeddingBagCollection takes per-value weights with sum pooling only.
@pytest.mark.parametrize("pooling, weighted", [("sum", False), ("mean", False), ("sum", True)])
def test_pooled_lookup_equals_the_uniform_provider(pooling, weighted):
    torch.manual_seed(0)
    provider = UniformEmbeddingProvider(dict(ROWS), K, pooling=pooling, is_weighted=weighted)
    tables = {t.name: provider.ebc.embedding_bags[t.name].weight.detach() for t in provider.tables}
    values = provider.effective_weights(tables)
    kjt = batch_kjt(1, weighted)
    out, occ = pooled_lookup(values, kjt, list(ROWS), pooling)
    torch.testing.assert_close(out, provider(kjt).values().detach(), rtol=1e-6, atol=1e-6)
    ids, bags, _ = occ["a"]
    assert len(set(zip(ids.tolist(), bags.tolist()))) == ids.numel()  # each (bag, id) pair once


class TinyArch(nn.Module):
    """Logit = MLP over [dense, e_a, e_b] with a BatchNorm (eval mode must make samples independent)."""

    def __init__(self, ignore_b: bool = False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(2 * K)
        self.mlp = nn.Sequential(nn.Linear(1 + 2 * K, 8), nn.Tanh(), nn.Linear(8, 1))
        self.ignore_b = ignore_b

    def forward(self, dense, kt):
        e = self.bn(kt.values())
        if self.ignore_b:
            e = torch.cat([e[:, :K], torch.zeros_like(e[:, K:])], dim=1)
        return self.mlp(torch.cat([dense, e], dim=1)).squeeze(1)


def reference_scores(arch, values, batches, pooling):
    """½ v² Σ_s (∂ℓ_s/∂v)², one sample at a time, through a per-bag Python loop."""
    arch.eval()
    fisher = {f: torch.zeros_like(v) for f, v in values.items()}
    for batch, n_valid in batches:
        per = batch.sparse_features.to_dict()
        for s in range(n_valid):
            leaves = {f: v.clone().requires_grad_(True) for f, v in values.items()}
            parts = []
            for f in ROWS:
                jt = per[f]
                lo, hi = int(jt.offsets()[s]), int(jt.offsets()[s + 1])
                ws = jt.weights()[lo:hi] if jt.weights_or_none() is not None else torch.ones(hi - lo)
                acc = torch.zeros(K)
                for i, w in zip(jt.values()[lo:hi].tolist(), ws.tolist()):
                    acc = acc + w * leaves[f][i]
                if pooling == "mean" and hi > lo:
                    acc = acc / (hi - lo)
                parts.append(acc)
            kt = KeyedTensor(keys=list(ROWS), length_per_key=[K, K], values=torch.cat(parts)[None])
            logit = arch(batch.dense_features[s : s + 1], kt)
            loss = nn.functional.binary_cross_entropy_with_logits(logit, batch.labels[s : s + 1], reduction="sum")
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)  # empty bags read nothing
            for f, g in zip(leaves, grads):
                if g is not None:
                    fisher[f] += g * g
    return {f: 0.5 * values[f] ** 2 * fisher[f] for f in values}


def make_batches(n: int = 2, weighted: bool = False):
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(100 + i)
        batch = Batch(
            dense_features=torch.randn(B, 1, generator=g),
            sparse_features=batch_kjt(10 + i, weighted),
            labels=(torch.rand(B, generator=g) < 0.5).float(),
        )
        out.append((batch, B if i == 0 else B - 2))  # the second batch ends in 2 padding rows
    return out


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_fisher_scores_match_per_sample_autograd(pooling, weighted):
    torch.manual_seed(0)
    arch = TinyArch()
    with torch.no_grad():  # BatchNorm statistics other than the identity, so eval mode matters
        arch.bn.running_mean.uniform_(-0.5, 0.5)
        arch.bn.running_var.uniform_(0.5, 2.0)
    values = {f: torch.randn(n, K) for f, n in ROWS.items()}
    batches = make_batches(weighted=weighted)
    got = fisher_scores(arch, values, batches, list(ROWS), pooling)
    assert arch.training  # its mode is restored
    want = reference_scores(arch, values, batches, pooling)
    for f in ROWS:
        torch.testing.assert_close(got[f], want[f], rtol=1e-5, atol=1e-8)


def test_a_field_the_arch_ignores_scores_zero_however_large():
    torch.manual_seed(0)
    arch = TinyArch(ignore_b=True)
    values = {"a": torch.randn(ROWS["a"], K) * 0.01, "b": torch.randn(ROWS["b"], K) * 100.0}
    scores = fisher_scores(arch, values, make_batches(), list(ROWS))
    assert torch.all(scores["b"] == 0) and scores["a"].sum() > 0
    # an id no held-out sample reads scores 0 too
    seen = {i for b, _ in make_batches() for i in b.sparse_features["a"].values().tolist()}
    unseen = [i for i in range(ROWS["a"]) if i not in seen]
    assert all(torch.all(scores["a"][i] == 0) for i in unseen)


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
        prune=PruneConfig(crs=(2.0, 4.0), score="fisher", allocation="global"),
    )


@pytest.mark.parametrize("method", ["dnis", "magnitude"])
def test_prune_score_fisher_ranks_by_the_search_split_score(tmp_path, config, method):
    cfg = dataclasses.replace(config, search=dataclasses.replace(config.search, method=method))
    try:
        run_search(cfg, tmp_path / "search")
        m, searched = load_searched(tmp_path / "search")
        pruned = m.derive(searched, cfg.prune)
        values = searched.provider.effective_weights(searched.tables)
        scores = search_split_scores(searched, values)
        # the plain lookup the score runs equals the sharded provider's output on real batches
        val = searched.dataset.load_split("val", searched.features)
        batch, _ = next(iter(EvalLoader(val, searched.features, 512)))
        with torch.no_grad():
            sharded = searched.provider(batch.sparse_features).values()
        plain, _ = pooled_lookup(values, batch.sparse_features, searched.features, cfg.model.pooling)
        torch.testing.assert_close(plain, sharded, rtol=1e-5, atol=1e-6)
    finally:
        if dist.is_initialized():
            destroy()
    total = sum(v.numel() for v in values.values())
    flat = torch.cat([scores[f].flatten() for f in searched.features])
    for p, cr in zip(pruned, cfg.prune.crs):
        kept = torch.cat([p.masks[f].flatten() for f in searched.features])
        assert int(kept.sum()) == kept_for_cr(total, cr) and mask_stats(p.masks)["cr"] == pytest.approx(cr, rel=1e-3)
        # every kept value scores at least as high as every dropped one
        assert flat[kept].min() >= flat[~kept].max()
        # retraining still starts from the effective values, not from the scores
        if p.values is not None:
            assert torch.equal(p.values[searched.features[0]], values[searched.features[0]])
    assert table_name(searched.features[0]) in searched.tables


def test_pep_and_autodim_refuse_the_fisher_score():
    from recdim.search.autodim import AutoDimMethod
    from recdim.search.pep import PEPMethod

    for cls in (PEPMethod, AutoDimMethod):
        with pytest.raises(ValueError, match="prune.score = 'fisher' applies to DNIS / AutoSrh and magnitude"):
            cls(Config()).derive(None, PruneConfig(score="fisher"))
