"""Filling tier tables: masked weights in, the same masked weights out; the masked initialisation is the
uniform table's initialisation under the mask."""

import torch

from recdim.layout.tier_values import tier_values
from recdim.modules.table_init import init_tables
from recdim.modules.tiered import TieredEmbeddingProvider
from recdim.modules.uniform import UniformEmbeddingProvider
from recdim.prune.planner import PlannerConfig, plan_tables
from recdim.retrain.tier_weights import gather_tier_values, masked_init, write_tier_tables

K = 8
SIZES = {"a": 60, "b": 40, "c": 10}
MULTI = ["b"]


class Holder(torch.nn.Module):
    def __init__(self, provider):
        super().__init__()
        self.provider = provider


def plans_and_weights(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    masks = {f: torch.rand(n, K, generator=g) < 0.4 for f, n in SIZES.items()}
    masks["a"][:20, :5] = True  # a frequent block sharing one column set
    masks["c"][:] = False  # a fully pruned table
    plans = plan_tables(masks, PlannerConfig(max_tiers=3))
    weights = {p.name: torch.randn(p.num_embeddings, K, generator=g) for p in plans}
    return plans, weights


def test_write_then_gather_returns_the_masked_weights():
    plans, weights = plans_and_weights()
    model = Holder(TieredEmbeddingProvider(plans, MULTI, device=torch.device("cpu")))
    assert write_tier_tables(model, plans, weights) == sum(len(p.tiers) for p in plans)
    got = gather_tier_values(model, plans)
    for p in plans:
        want = tier_values(p, weights[p.name])
        assert len(got[p.name]) == len(want)
        for a, b in zip(got[p.name], want):
            assert torch.equal(a, b)
    masked = model.provider.masked_weights()
    for p in plans:
        assert torch.equal(masked[p.name], weights[p.name] * p.mask())


def test_masked_init_equals_masked_uniform_init():
    plans, _ = plans_and_weights()
    uniform = Holder(UniformEmbeddingProvider(SIZES, K, device=torch.device("cpu")))
    init_tables(uniform, seed=3, std=0.1)
    tiered = Holder(TieredEmbeddingProvider(plans, MULTI, device=torch.device("cpu")))
    init_tables(tiered, seed=3, std=0.1, fill=masked_init(plans))
    got = tiered.provider.masked_weights()
    for p in plans:
        w = uniform.provider.ebc.embedding_bags[p.name].weight.detach()
        assert torch.equal(got[p.name], w * p.mask())
