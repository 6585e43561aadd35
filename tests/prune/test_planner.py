"""The tier planner: exact storage of the mask, honest bytes, the tier budget, and optimality by brute force."""

from typing import List

import pytest
import torch
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recdim.layout.tier_plan import DenseRemap, RunRemap, TablePlan
from recdim.layout.tier_values import masked_table, tier_values
from recdim.prune.planner import PlannerConfig, choose_remap, plan_table, plan_tables


def mixed_mask(N: int, K: int, seed: int, density: float = 0.4, num_sets: int = 3) -> torch.Tensor:
    """Some rows dropped, some sharing a few column sets, the rest with their own random columns."""
    g = torch.Generator().manual_seed(seed)
    sets = torch.rand(num_sets, K, generator=g) < density
    u = torch.rand(N, 1, generator=g)
    own = torch.rand(N, K, generator=g) < density
    m = torch.where(u < 0.5, sets[torch.randint(0, num_sets, (N,), generator=g)], own)
    m[u.squeeze(1) < 0.1] = False
    return m


def stored_counts(plan: TablePlan) -> torch.Tensor:
    """[N, K] how many tier slots store each (row, column)."""
    K = plan.embedding_dim
    counts = torch.zeros(plan.num_embeddings, K + 1, dtype=torch.int64)
    ids, offsets = plan.row_ids(), plan.tier_offsets
    for j, maps in enumerate(plan.row_maps()):
        rows = ids[offsets[j] : offsets[j + 1]].unsqueeze(1).expand_as(maps)
        cols = torch.where(maps >= 0, maps.to(torch.int64), K)
        counts.index_put_(
            (rows.reshape(-1), cols.reshape(-1)), torch.ones(maps.numel(), dtype=torch.int64), accumulate=True
        )
    return counts[:, :K]


@pytest.mark.parametrize(
    "K,max_tiers,widths,seed",
    [
        (8, 1, (), 0),
        (16, 2, (), 1),
        (16, 4, (), 2),
        (32, 3, (), 3),
        (12, 8, (), 4),
        (132, 3, (), 5),
        (32, 6, (4, 8, 16), 6),
    ],
)
def test_every_kept_entry_stored_exactly_once(K, max_tiers, widths, seed):
    mask = mixed_mask(300, K, seed)
    config = PlannerConfig(max_tiers=max_tiers, widths=widths)
    plan = plan_table(mask, "t_x", "x", config)
    assert torch.equal(stored_counts(plan), mask.to(torch.int64))
    assert torch.equal(plan.mask(), mask)
    dropped = ~mask.any(dim=1)
    assert torch.equal(plan.global_rows() < 0, dropped)  # dropped rows have no tier row
    assert (
        plan.kept_rows == int((~dropped).sum())
        and sorted(plan.row_ids().tolist()) == torch.nonzero(~dropped).squeeze(1).tolist()
    )
    assert 1 <= len(plan.tiers) <= max_tiers
    for j, t in enumerate(plan.tiers):
        assert t.width % 4 == 0 and t.width >= 4 and t.num_rows >= 1
        assert t.name == f"t_x__tier{j}" and t.feature_name == f"x@@tier{j}"
        maps = t.row_maps().to(torch.int64)
        kept = maps >= 0
        # Kept columns first, ascending and distinct; padding (-1) after them; each row fills its tier.
        assert torch.equal(kept, torch.arange(t.width) < kept.sum(1, keepdim=True))
        assert all(torch.all(r[r >= 0][1:] > r[r >= 0][:-1]) for r in maps)
        palette = config.palette(K)
        assert t.width in palette and all(p < int(kept.sum(1).max()) for p in palette if p < t.width)
        assert t.column_map.dtype == (torch.int8 if K <= 128 else torch.int16)
    w = torch.randn(mask.shape)
    assert torch.equal(masked_table(plan, tier_values(plan, w)), w * mask)


def test_reported_bytes_are_the_tensors_bytes():
    mask = mixed_mask(500, 16, 7)
    plan = plan_table(mask, "t_x", "x", PlannerConfig(max_tiers=3))
    b = plan.bytes()
    values = tier_values(plan, torch.randn(mask.shape))
    assert b.values == sum(v.numel() * v.element_size() for v in values)
    assert b.column_maps == sum(t.column_map.numel() * t.column_map.element_size() for t in plan.tiers)
    assert b.remap == sum(v.numel() * v.element_size() for v in plan.remap.tensors().values())
    assert b.total == b.values + b.column_maps + b.remap
    assert b.total == sum(v.numel() * v.element_size() for v in [*values, *plan.tensors().values()])
    nnz = int(mask.sum())
    assert b.nnz == nnz and b.uniform == 500 * 16 * 4
    assert b.csr == nnz * 5 + 501 * 4 and b.coo == nnz * 9 and b.floor == nnz * 4 + 500 * 16 // 8


@pytest.mark.parametrize("K", [16, 32])
@pytest.mark.parametrize("density", [0.1, 0.3, 0.5])
def test_sparse_masks_cost_less_than_uniform(K, density):
    g = torch.Generator().manual_seed(int(density * 10) + K)
    mask = torch.rand(2000, K, generator=g) < density  # every row its own column set: per-row maps
    plan = plan_table(mask, "t", "f", PlannerConfig(max_tiers=4))
    assert plan.bytes().total < plan.bytes().uniform


@pytest.mark.parametrize("K", [16, 32])
def test_frequency_dependent_prefix_dims_cost_far_less_than_uniform(K):
    # Row i (ids by descending frequency) keeps its first K * (1 - i / N)^3 columns: mean K / 4.
    dims = (K * (1.0 - torch.arange(2000) / 2000) ** 3).long()
    prefix = torch.arange(K) < dims.unsqueeze(1)
    p = plan_table(prefix, "t", "f", PlannerConfig(max_tiers=K // 4 + 1))
    assert p.bytes().total < p.bytes().uniform / 2
    assert isinstance(p.remap, RunRemap)  # tiers are contiguous id ranges
    p_all = plan_table(prefix, "t", "f", PlannerConfig(max_tiers=K + 1))  # one shared tier per set
    assert all(t.shared for t in p_all.tiers) and p_all.bytes().total < p.bytes().total


def test_dense_mask_costs_uniform_plus_a_few_bytes():
    plan = plan_table(torch.ones(1000, 16, dtype=torch.bool), "t", "f")
    b = plan.bytes()
    assert len(plan.tiers) == 1 and plan.tiers[0].shared and plan.tiers[0].width == 16
    assert b.values == b.uniform and b.column_maps + b.remap <= 16 + 16


def test_all_dropped_table_has_no_tiers():
    plan = plan_table(torch.zeros(40, 8, dtype=torch.bool), "t", "f")
    assert plan.tiers == () and plan.kept_rows == 0 and plan.bytes().values == 0
    assert torch.equal(plan.global_rows(), torch.full((40,), -1))


def test_remap_kind_and_dtype():
    blocks = torch.zeros(70000, 8, dtype=torch.bool)
    blocks[:1000, :8], blocks[1000:20000, :4], blocks[20000:50000, 2:6] = True, True, True
    plan = plan_table(blocks, "t", "f")
    assert isinstance(plan.remap, RunRemap) and plan.remap.starts.numel() <= 4 and plan.bytes().remap <= 32
    g = torch.Generator().manual_seed(0)
    for n, dtype in ((100, torch.int8), (300, torch.int16), (40000, torch.int32)):
        rand = plan_table(torch.rand(n, 16, generator=g) < 0.5, "t", "f", PlannerConfig(max_tiers=4))
        assert isinstance(rand.remap, DenseRemap) and rand.remap.table.dtype == dtype  # narrowest for n - 1
    # The planner keeps whichever encoding of the same map is smaller.
    rows = rand.global_rows()
    dense, runs = choose_remap(rows, rand.kept_rows), choose_remap(torch.sort(rows).values, rand.kept_rows)
    assert isinstance(dense, DenseRemap) and isinstance(runs, RunRemap) and runs.nbytes < dense.nbytes
    assert torch.equal(runs.global_rows(rows.numel()), torch.sort(rows).values)


def test_few_column_sets_get_shared_tiers_only():
    g = torch.Generator().manual_seed(3)
    sets = torch.rand(3, 16, generator=g) < 0.4
    sets[:, 0] = True
    mask = sets[torch.randint(0, 3, (400,), generator=g)]
    mask[torch.rand(400, generator=g) < 0.2] = False
    plan = plan_table(mask, "t", "f", PlannerConfig(max_tiers=3))
    assert len(plan.tiers) == 3 and all(t.shared for t in plan.tiers)
    assert plan.bytes().column_maps == sum(t.width for t in plan.tiers)  # one int8 map per tier


def _partitions(items: List[int]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for p in _partitions(rest):
        yield [[first]] + p
        for i in range(len(p)):
            yield p[:i] + [[first] + p[i]] + p[i + 1 :]


def _brute_force(mask: torch.Tensor, T: int, palette: List[int]) -> int:
    """Fewest value + column-map bytes over every partition of the kept rows into <= T tiers."""
    rows = [i for i in range(mask.size(0)) if mask[i].any()]
    if not rows:
        return 0
    sets = {i: tuple(mask[i].tolist()) for i in rows}
    best = None
    for part in _partitions(rows):
        if len(part) > T:
            continue
        cost = 0
        for tier in part:
            w = min(p for p in palette if p >= max(int(mask[i].sum()) for i in tier))
            shared = len({sets[i] for i in tier}) == 1
            cost += len(tier) * w * 4 + w if shared else len(tier) * w * 5
        best = cost if best is None else min(best, cost)
    return best


def test_optimal_against_brute_force():
    g = torch.Generator().manual_seed(0)
    for trial in range(120):
        N, K = int(torch.randint(1, 8, (1,), generator=g)), (4, 8, 12, 16)[trial % 4]
        density = float(torch.rand(1, generator=g))
        base = torch.rand(3, K, generator=g) < density
        mask = torch.where(
            torch.rand(N, 1, generator=g) < 0.5,
            base[torch.randint(0, 3, (N,), generator=g)],
            torch.rand(N, K, generator=g) < density,
        )
        T = int(torch.randint(1, 4, (1,), generator=g))
        config = PlannerConfig(max_tiers=T, widths=(4, 12) if trial % 3 == 0 else ())
        b = plan_table(mask, "t", "f", config).bytes()
        assert b.values + b.column_maps == _brute_force(mask, T, config.palette(K)), (trial, mask, T)


def test_tier_configs_are_placed_by_torchrec_planner():
    plans = plan_tables({"a": mixed_mask(300, 16, 1), "b": mixed_mask(200, 16, 2)}, PlannerConfig(max_tiers=3))
    configs = [c for p in plans for c in p.tier_configs()]
    assert [c.name for c in configs] == [t.name for p in plans for t in p.tiers]
    ebc = EmbeddingBagCollection(tables=configs, device=torch.device("meta"))
    for world in (1, 3):
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device="cpu"))
        plan = planner.plan(ebc, [EmbeddingBagCollectionSharder()])
        assert set(plan.plan[""].keys()) == {c.name for c in configs}


def test_planner_config_validation():
    with pytest.raises(ValueError):
        PlannerConfig(max_tiers=0)
    with pytest.raises(ValueError):
        PlannerConfig(widths=(4, 6))
    assert PlannerConfig(widths=(8, 4, 64)).palette(30) == [4, 8, 32]
    with pytest.raises(ValueError):
        plan_table(torch.ones(3), "t", "f")
