"""The tier provider equals the masked K-wide model: forward, gradients, SGD retraining, sharded over 2 ranks."""

from typing import Dict, List, Tuple

import pytest
import torch
from torchrec import KeyedJaggedTensor

from recdim.config import ModelConfig, TrainConfig
from recdim.layout.tier_plan import DenseRemap, RunRemap
from recdim.layout.tier_values import tier_values
from recdim.modules.table_init import local_pieces, table_state
from recdim.modules.tiered import TieredEmbeddingProvider, tiered_provider_factory
from recdim.prune.planner import PlannerConfig, plan_tables
from recdim.retrain.tier_weights import gather_tier_values, write_tier_tables
from recdim.train.distributed import build_optimizer, init_distributed, shard_model
from tests.dist_utils import run_ranks

K = 8
SIZES = {"a": 60, "b": 40, "c": 50, "d": 10}  # a, c single-valued; b, d multi-valued; d fully pruned
MULTI = ["b", "d"]
MAX_LEN = {"a": 1, "b": 4, "c": 1, "d": 2}


def make_masks(seed: int = 0) -> Dict[str, torch.Tensor]:
    """Rows dropped, rows sharing a few column sets, rows with their own sets; ``c`` in frequency blocks."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for f, n in SIZES.items():
        sets = torch.rand(3, K, generator=g) < 0.5
        sets[:, 0] = True
        u = torch.rand(n, generator=g)
        own = torch.rand(n, K, generator=g) < 0.4
        m = torch.where((u < 0.6).unsqueeze(1), sets[torch.randint(0, 3, (n,), generator=g)], own)
        m[u < 0.2] = False
        masks[f] = m
    masks["c"] = torch.zeros(SIZES["c"], K, dtype=torch.bool)
    masks["c"][:10, :7], masks["c"][10:30, :4], masks["c"][30:45, 5:] = True, True, True  # [0, 4): identity map
    masks["d"] = torch.zeros(SIZES["d"], K, dtype=torch.bool)
    return masks


def setup(seed: int = 0):
    plans = plan_tables(make_masks(seed), PlannerConfig(max_tiers=3))
    g = torch.Generator().manual_seed(seed + 1)
    weights = {p.name: torch.randn(p.num_embeddings, K, generator=g) for p in plans}
    return plans, weights


def make_bags(B: int, seed: int) -> Dict[str, List[Tuple[List[int], List[float]]]]:
    g = torch.Generator().manual_seed(seed)
    bags = {}
    for f, n in SIZES.items():
        rows = []
        for _ in range(B):
            L = (
                int(torch.randint(0, MAX_LEN[f] + 1, (1,), generator=g))
                if MAX_LEN[f] > 1
                else int(torch.rand(1, generator=g) < 0.85)
            )
            rows.append((torch.randint(0, n, (L,), generator=g).tolist(), (torch.rand(L, generator=g) + 0.5).tolist()))
        bags[f] = rows
    return bags


def to_kjt(bags, samples, weighted: bool = False) -> KeyedJaggedTensor:
    ids = [i for f in SIZES for s in samples for i in bags[f][s][0]]
    ws = [w for f in SIZES for s in samples for w in bags[f][s][1]]
    lengths = [len(bags[f][s][0]) for f in SIZES for s in samples]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(SIZES),
        values=torch.tensor(ids, dtype=torch.int64),
        lengths=torch.tensor(lengths, dtype=torch.int32),
        weights=torch.tensor(ws) if weighted else None,
    )


def reference(weights, masks, bags, samples, pooling="sum", weighted=False) -> torch.Tensor:
    """Plain per-id loops over the masked K-wide tables: [len(samples), F * K]."""
    rows = []
    for s in samples:
        parts = []
        for f in SIZES:
            w = weights[f"t_{f}"] * masks[f]
            ids, ws = bags[f][s]
            v = torch.zeros(K)
            for i, x in zip(ids, ws):
                v = v + w[i] * (x if weighted else 1.0)
            parts.append(v / max(len(ids), 1) if pooling == "mean" else v)
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def test_plans_cover_every_route():
    plans, _ = setup()
    by = {p.feature: p for p in plans}
    # Multi-valued b: shared tiers pool in the EBC, per-row tiers go per id; single-valued a: per id, both
    # map kinds; c: run remap; d: no tiers at all.
    assert any(t.shared for t in by["b"].tiers) and any(not t.shared for t in by["b"].tiers)
    assert any(t.shared for t in by["a"].tiers) and any(not t.shared for t in by["a"].tiers)
    assert isinstance(by["c"].remap, RunRemap) and isinstance(by["a"].remap, DenseRemap)
    assert by["d"].tiers == ()
    provider = TieredEmbeddingProvider(plans, MULTI, device=torch.device("cpu"))
    # Every tier is one table of the one collection, at its own width; b's shared tiers pool in the kernel.
    assert provider.ebc is not None
    configs = {c.name: c.embedding_dim for c in provider.ebc.embedding_bag_configs()}
    assert configs == {t.name: t.width for p in plans for t in p.tiers}
    pooled = {plans[s.feature].tiers[s.tier].name for s in provider.routing.slots if s.pooled}
    assert pooled == {t.name for t in by["b"].tiers if t.shared}
    assert len({w for w in configs.values()}) >= 2


@pytest.mark.parametrize("pooling,weighted", [("sum", False), ("mean", False), ("sum", True), ("mean", True)])
def test_forward_and_gradients_match_masked_reference(pooling, weighted):
    plans, weights = setup()
    masks = {p.feature: p.mask() for p in plans}
    provider = TieredEmbeddingProvider.from_masked_weights(plans, weights, MULTI, pooling, weighted)
    bags = make_bags(24, seed=3)
    samples = list(range(24))
    out = provider(to_kjt(bags, samples, weighted)).values()
    leaf = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    ref = reference(leaf, masks, bags, samples, pooling, weighted)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)

    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * proj).sum().backward()
    (ref * proj).sum().backward()
    for p in plans:
        grads = [provider.tier_parameter(t.name).grad for t in p.tiers]
        grads = [
            g.to_dense()
            if g is not None and g.is_sparse
            else (g if g is not None else torch.zeros(t.num_rows, t.width))
            for g, t in zip(grads, p.tiers)
        ]
        expect = tier_values(p, leaf[p.name].grad)  # reference gradient on the kept entries, zero padding
        for g, e in zip(grads, expect):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-6)
        assert not (leaf[p.name].grad * ~masks[p.feature]).any()


def test_sgd_retraining_matches_masked_model_and_keeps_pruned_zero():
    plans, weights = setup()
    masks = {p.feature: p.mask() for p in plans}
    torch.manual_seed(0)
    head = torch.nn.Linear(len(SIZES) * K, 1)
    provider = TieredEmbeddingProvider.from_masked_weights(plans, weights, MULTI)
    head_t = torch.nn.Linear(len(SIZES) * K, 1)
    head_t.load_state_dict(head.state_dict())
    leaf = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    opt_t = torch.optim.SGD(list(provider.parameters()) + list(head_t.parameters()), lr=0.2)
    opt_r = torch.optim.SGD(list(leaf.values()) + list(head.parameters()), lr=0.2)
    for step in range(4):
        bags = make_bags(16, seed=10 + step)
        samples = list(range(16))
        y = torch.randn(16, generator=torch.Generator().manual_seed(step))
        for opt, pred in (
            (opt_t, lambda: head_t(provider(to_kjt(bags, samples)).values()).squeeze(1)),
            (opt_r, lambda: head(reference(leaf, masks, bags, samples)).squeeze(1)),
        ):
            opt.zero_grad()
            loss = (pred() - y).pow(2).mean()
            loss.backward()
            opt.step()
    trained = provider.masked_weights()
    for p in plans:
        torch.testing.assert_close(trained[p.name], (leaf[p.name] * masks[p.feature]).detach(), rtol=0, atol=1e-6)
        assert not torch.equal(trained[p.name], weights[p.name] * masks[p.feature]) or p.kept_rows == 0
        # Padding slots (pruned entries) are still exactly zero.
        for have, want in zip(provider.tier_weights()[p.name], tier_values(p, trained[p.name])):
            assert torch.equal(have, want)
    torch.testing.assert_close(head_t.weight, head.weight, rtol=0, atol=1e-6)


def test_k_128_int8_maps():
    """K = 128: int8 column maps whose padding needs the sink column 128 at run time."""
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(30, 128, generator=g) < torch.rand(30, 1, generator=g)
    plans = plan_tables({"x": mask}, PlannerConfig(max_tiers=2))
    assert plans[0].tiers[0].column_map.dtype == torch.int8
    w = torch.randn(30, 128, generator=g)
    provider = TieredEmbeddingProvider.from_masked_weights(plans, {"t_x": w}, multi_valued=["x"])
    ids, lengths = torch.randint(0, 30, (50,), generator=g), torch.tensor([3, 0, 5, 2] * 5)
    out = provider(KeyedJaggedTensor.from_lengths_sync(keys=["x"], values=ids, lengths=lengths)).values()
    ref = torch.stack([(w * mask)[bag].sum(0) for bag in torch.split(ids, lengths.tolist())])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_provider_factory_checks_plans():
    plans, _ = setup()
    factory = tiered_provider_factory(plans, MULTI)
    provider = factory(ModelConfig(embedding_dim=K), {"c": 50, "a": 60}, False, torch.device("cpu"))
    assert provider.feature_names == ["c", "a"] and provider.embedding_bytes() == sum(
        p.bytes().total for p in plans[::2][::-1]
    )
    with pytest.raises(ValueError, match="model wants"):
        factory(ModelConfig(embedding_dim=K), {"a": 61}, False, torch.device("cpu"))
    with pytest.raises(ValueError, match="no table plan"):
        factory(ModelConfig(embedding_dim=K), {"z": 3}, False, torch.device("cpu"))


LR, BATCH = 0.5, 12


class Net(torch.nn.Module):
    def __init__(self, plans):
        super().__init__()
        self.provider = TieredEmbeddingProvider(plans, MULTI, device=torch.device("meta"))
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, kjt):
        return self.provider(kjt).values() * self.scale


def _sharded_step(rank, world):
    ctx = init_distributed("cpu")
    plans, weights = setup()
    cfg = TrainConfig(sharding="table_wise", embedding_optimizer="sgd", embedding_lr=LR, device="cpu")
    dmp = shard_model(Net(plans), cfg, ctx)
    write_tier_tables(dmp, plans, weights)
    optim = build_optimizer(dmp, cfg, ctx)
    lo, hi = rank * BATCH // world, (rank + 1) * BATCH // world
    bags = make_bags(BATCH, seed=7)
    proj = torch.randn(BATCH, len(SIZES) * K, generator=torch.Generator().manual_seed(8))
    optim.zero_grad()
    out = dmp(to_kjt(bags, list(range(lo, hi))))
    (out * proj[lo:hi]).sum(1).mean().backward()
    optim.step()
    pieces = {k: [(t.detach().clone(), r, c) for t, r, c in local_pieces(v)] for k, v in table_state(dmp)}
    return out.detach(), pieces, gather_tier_values(dmp, plans)


@pytest.mark.multiprocess
def test_sharded_two_ranks_forward_and_sgd_step_match_reference():
    plans, weights = setup()
    masks = {p.feature: p.mask() for p in plans}
    results = run_ranks(2, _sharded_step)
    bags = make_bags(BATCH, seed=7)
    proj = torch.randn(BATCH, len(SIZES) * K, generator=torch.Generator().manual_seed(8))
    leaf = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    ref = reference(leaf, masks, bags, list(range(BATCH)))
    (ref * proj).sum(1).mean().backward()
    torch.testing.assert_close(torch.cat([r[0] for r in results]), ref.detach(), rtol=0, atol=1e-6)

    expect = {
        t.name: v
        for p in plans
        for t, v in zip(p.tiers, tier_values(p, (leaf[p.name] - LR * leaf[p.name].grad).detach()))
    }
    seen = set()
    assert results[1][2] is None
    gathered = results[0][2]
    for p in plans:
        for t, v in zip(p.tiers, gathered[p.name]):
            torch.testing.assert_close(v, expect[t.name], rtol=0, atol=1e-6)
    for _, pieces, _ in results:
        for key, parts in pieces.items():
            name = key.split(".")[-2]
            for t, (r0, r1), (c0, c1) in parts:
                torch.testing.assert_close(t, expect[name][r0:r1, c0:c1], rtol=0, atol=1e-6)
                seen.add(name)
    assert seen == set(expect)
    assert all(any(parts for parts in pieces.values()) for _, pieces, _ in results)  # both ranks hold tiers
    assert any(p.tiers for p in plans if p.feature in MULTI)  # the per-id (EmbeddingCollection) path ran
