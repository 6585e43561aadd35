"""The one-pass no-grad lookup (``torch.ops.recdim.tier_lookup``) equals the routed path and the masked
reference: pooled and per-id bags, dropped ids, a fully pruned feature, weights, mean pooling, int16 maps,
and the tables of a one-rank DistributedModelParallel read in place after a training step."""

import os

import pytest
import torch
from torchrec import KeyedJaggedTensor

from recdim.modules.tier_training import kernel_tables
from recdim.modules.tiered import TieredEmbeddingProvider
from recdim.native import native_ops_available
from recdim.prune.planner import PlannerConfig, plan_tables
from recdim.retrain.tier_weights import write_tier_tables
from recdim.train.distributed import TrainConfig, build_optimizer, init_distributed, shard_model
from tests.dist_utils import run_ranks
from tests.modules.test_tiered import MULTI, SIZES, K, Net, make_bags, reference, setup, to_kjt

pytestmark = pytest.mark.skipif(not native_ops_available(), reason="native kernels unavailable")


def _count_calls(module: torch.nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("pooling,weighted", [("sum", False), ("mean", False), ("sum", True), ("mean", True)])
@pytest.mark.parametrize("B", [1, 7, 64])
def test_fused_equals_routed_and_reference(B, pooling, weighted):
    plans, weights = setup(seed=B)
    masks = {p.feature: p.mask() for p in plans}
    provider = TieredEmbeddingProvider.from_masked_weights(plans, weights, MULTI, pooling, weighted)
    bags = make_bags(B, seed=B + 20)
    kjt = to_kjt(bags, range(B), weighted)
    calls = _count_calls(provider.ebc)
    routed = provider(kjt).values()  # parameters require grad: the routed path
    assert len(calls) == 1
    with torch.no_grad():
        fused = provider(kjt).values()
    assert len(calls) == 1, "no-grad lookup went through the collection"
    ref = reference(weights, masks, bags, list(range(B)), pooling, weighted)
    # Single-id bags are read and written once on both paths; bags of several ids sum in another order.
    torch.testing.assert_close(fused, routed.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-6)
    single = [f for f in SIZES if f not in MULTI]
    cols = torch.cat([torch.arange(K) + K * list(SIZES).index(f) for f in single])
    assert torch.equal(fused[:, cols], routed.detach()[:, cols])


def test_fused_int16_maps_and_frozen_parameters():
    """K = 136 (int16 maps); parameters that do not require grad take the fused path with grad enabled."""
    g = torch.Generator().manual_seed(2)
    masks = {"x": torch.rand(40, 136, generator=g) < torch.rand(40, 1, generator=g), "y": torch.rand(9, 136) < 0.5}
    plans = plan_tables(masks, PlannerConfig(max_tiers=3))
    w = {p.name: torch.randn(p.num_embeddings, 136, generator=g) for p in plans}
    provider = TieredEmbeddingProvider.from_masked_weights(plans, w, multi_valued=["x"])
    provider.requires_grad_(False)
    calls = _count_calls(provider.ebc)
    ids_x, len_x = torch.randint(0, 40, (30,), generator=g), torch.tensor([3, 0, 5, 2, 20])
    ids_y, len_y = torch.randint(0, 9, (5,), generator=g), torch.ones(5, dtype=torch.int64)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["x", "y"], values=torch.cat([ids_x, ids_y]), lengths=torch.cat([len_x, len_y])
    )
    out = provider(kjt).values().view(5, 2, 136)
    assert not calls
    ref_x = torch.stack([(w["t_x"] * masks["x"])[bag].sum(0) for bag in torch.split(ids_x, len_x.tolist())])
    torch.testing.assert_close(out[:, 0], ref_x, rtol=0, atol=1e-5)
    assert torch.equal(out[:, 1], (w["t_y"] * masks["y"])[ids_y])


def test_fused_rejects_bad_input():
    plans, weights = setup()
    provider = TieredEmbeddingProvider.from_masked_weights(plans, weights, MULTI)
    kjt = to_kjt(make_bags(4, seed=1), range(4))
    with torch.no_grad():
        tables = provider._fused_tables(kjt.lengths().device)
    assert tables is not None
    r = provider.remap
    remap = (
        r.features,
        r.dense,
        r.run_starts,
        r.run_deltas,
        r.run_directory,
        provider.router.boundaries,
        provider.router.slot_of,
    )
    rest = (provider.router.map_base, provider.router.map_stride, provider.scatter.slot_map_base)
    rest = rest + (provider.scatter.flat_maps, 4, K, False)
    ids, lengths = kjt.values(), kjt.lengths()
    with pytest.raises(RuntimeError, match="lengths sum to"):
        torch.ops.recdim.tier_lookup(ids[:-1], lengths, None, *remap, tables, *rest)
    with pytest.raises(RuntimeError, match="expected F \\* B"):
        torch.ops.recdim.tier_lookup(ids, lengths[:-1], None, *remap, tables, *rest)
    bad = ids.clone()
    bad[0] = SIZES["a"]  # the first value belongs to feature a (60 ids)
    with pytest.raises(RuntimeError, match="id 60 of feature 0 .* outside \\[0, 60\\)"):
        torch.ops.recdim.tier_lookup(bad, lengths, None, *remap, tables, *rest)


class _Net(torch.nn.Module):
    def __init__(self, plans, pooling="sum", weighted=False):
        super().__init__()
        self.provider = TieredEmbeddingProvider(plans, MULTI, pooling, weighted, device=torch.device("meta"))
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, kjt):
        return self.provider(kjt).values() * self.scale


def _train(rank, world, native, optimizer, pooling, weighted):
    """Three training steps on one rank, then a no-grad forward; returns outputs, tables, optimizer state."""
    if not native:
        os.environ["RECDIM_NATIVE"] = "0"
    ctx = init_distributed("cpu")
    plans, weights = setup()
    cfg = TrainConfig(sharding="table_wise", embedding_optimizer=optimizer, embedding_lr=0.3, device="cpu")
    dmp = shard_model(_Net(plans, pooling, weighted), cfg, ctx)
    write_tier_tables(dmp, plans, weights)
    optim = build_optimizer(dmp, cfg, ctx)
    provider = dmp.module.provider
    calls = _count_calls(provider.ebc)
    proj = torch.randn(16, len(SIZES) * K, generator=torch.Generator().manual_seed(8))
    outs = []
    for step in range(3):
        kjt = to_kjt(make_bags(16, seed=7 + step), range(16), weighted)
        optim.zero_grad()
        out = dmp(kjt)
        (out * proj).sum().backward()
        optim.step()
        outs.append(out.detach())
    with torch.no_grad():
        outs.append(dmp(to_kjt(make_bags(16, seed=30), range(16), weighted)))
    fused = kernel_tables(provider.ebc, provider._slot_tables)
    assert fused is not None
    return (
        outs,
        [w.clone() for w in fused.weights],
        [m.clone() for m in fused.momenta],
        dmp.module.scale.detach().clone(),
        len(calls),
    )


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "optimizer,pooling,weighted",
    [("sgd", "sum", False), ("rowwise_adagrad", "sum", False), ("rowwise_adagrad", "mean", True)],
)
def test_one_rank_training_equals_routed_training(optimizer, pooling, weighted):
    """One rank: the one-pass forward and in-place update equal the routed path through TorchRec's fused
    kernels (outputs, tables, row-wise Adagrad state, dense parameter) over three steps; atol 1e-5."""
    (fast,) = run_ranks(1, _train, True, optimizer, pooling, weighted)
    (slow,) = run_ranks(1, _train, False, optimizer, pooling, weighted)
    assert fast[4] == 0, "the one-pass path should not call the collection"
    if optimizer == "rowwise_adagrad":
        assert all(bool(m.gt(0).any()) for m in fast[2] if m.numel())
    assert slow[4] == 4, "without native kernels every call goes through the collection"
    for a, b in zip(fast[0], slow[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for a, b in zip(fast[1], slow[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for a, b in zip(fast[2], slow[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[3], slow[3], rtol=0, atol=1e-5)


def _one_rank(rank, world):
    ctx = init_distributed("cpu")
    plans, weights = setup()
    cfg = TrainConfig(sharding="table_wise", embedding_optimizer="sgd", embedding_lr=0.5, device="cpu")
    dmp = shard_model(Net(plans), cfg, ctx)
    write_tier_tables(dmp, plans, weights)
    optim = build_optimizer(dmp, cfg, ctx)
    kjt = to_kjt(make_bags(16, seed=7), range(16))
    optim.zero_grad()
    dmp(kjt).sum().backward()
    optim.step()
    routed = dmp(kjt).detach()  # grad enabled: the routed path through the fused training kernels
    provider = dmp.module.provider
    with torch.no_grad():
        tables = provider._fused_tables(kjt.lengths().device)
        calls = _count_calls(provider.ebc)
        fused = dmp(kjt)
    assert not calls
    return routed, fused, tables is not None


@pytest.mark.multiprocess
def test_one_rank_dmp_reads_trained_tables_in_place():
    ((routed, fused, found),) = run_ranks(1, _one_rank)
    assert found, "a one-rank DMP should expose every tier table whole"
    torch.testing.assert_close(fused, routed, rtol=0, atol=1e-6)
