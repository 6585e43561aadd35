"""TierRemap equals the plans' own remaps, renumbered into the lookup's row space, for mixed remap kinds."""

import torch

from recdim.layout.tier_plan import DenseRemap, RunRemap
from recdim.layout.tier_routing import TierRouting
from recdim.modules.remap import TierRemap
from recdim.prune.planner import PlannerConfig, plan_tables

K = 8


def _masks():
    g = torch.Generator().manual_seed(1)
    masks = {
        "a": torch.rand(50, K, generator=g) < 0.5,  # elementwise: dense remap
        "b": torch.zeros(60, K, dtype=torch.bool),  # frequency blocks: run remap
        "c": torch.rand(20, K, generator=g) < 0.3,
        "d": torch.zeros(30, K, dtype=torch.bool),
    }
    masks["b"][:10, :8], masks["b"][10:25, :4], masks["b"][40:55, 4:] = True, True, True
    masks["d"][5:20, :4] = True
    masks["a"][::7] = False  # dropped rows
    return masks


def test_remap_equals_plan_rows_renumbered():
    plans = plan_tables(_masks(), PlannerConfig(max_tiers=3))
    kinds = {type(p.remap) for p in plans}
    assert kinds == {DenseRemap, RunRemap}
    routing = TierRouting.build(plans, set(), K)
    remap = TierRemap(plans, routing)
    g = torch.Generator().manual_seed(2)
    ids = [
        torch.randint(0, p.num_embeddings, (int(torch.randint(0, 40, (1,), generator=g)),), generator=g) for p in plans
    ]
    ids[1] = torch.cat([ids[1], torch.arange(plans[1].num_embeddings)])  # every id of the run remap
    rows = remap(torch.cat(ids), [x.numel() for x in ids])
    assert rows.dtype == torch.int32
    got = rows.to(torch.int64).split([x.numel() for x in ids])
    for fi, (p, x, r) in enumerate(zip(plans, ids, got)):
        plan_rows = p.global_rows()[x]
        kept = plan_rows >= 0
        assert torch.equal(r[kept], routing.renumber(fi, p, plan_rows[kept]))
        assert bool((r[~kept] >= p.kept_rows).all())  # dropped ids: anywhere in the dropped bucket
    assert int((~torch.cat([p.global_rows()[x] >= 0 for p, x in zip(plans, ids)])).sum()) > 0
