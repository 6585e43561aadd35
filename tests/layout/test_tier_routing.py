"""Tier routing: pooled slots first, per-id slots grouped by width, index tables consistent with the plans."""

import torch

from recdim.layout.tier_routing import PER_ID, POOLED, TierRouting
from recdim.prune.planner import PlannerConfig, plan_tables

K = 8


def test_routing_of_mixed_plans():
    g = torch.Generator().manual_seed(0)
    masks = {f: torch.rand(n, K, generator=g) < 0.5 for f, n in {"a": 40, "b": 30, "c": 5}.items()}
    masks["b"][:20, :4] = True  # a shared column set in the multi-valued feature
    masks["c"][:] = False
    plans = plan_tables(masks, PlannerConfig(max_tiers=3))
    r = TierRouting.build(plans, {"b"}, K)
    assert len(r.tiers) == sum(len(p.tiers) for p in plans)
    assert sorted(r.slot_order) == list(range(len(r.tiers)))
    assert all(r.slot_order[s] == g for g, s in enumerate(r.slot_of_tier))
    assert all(r.tiers[g][2] == POOLED for g in r.pooled)
    assert all(plans[r.tiers[g][0]].feature == "b" and r.tiers[g][1].shared for g in r.pooled)
    lo = r.num_pooled
    for a, b, w in r.segments:  # per-id slots: one contiguous range per width, ascending
        assert a == lo and all(
            r.tiers[r.slot_order[s]][1].width == w and r.tiers[r.slot_order[s]][2] == PER_ID for s in range(a, b)
        )
        lo = b
    assert lo == len(r.slot_order) and r.widths == sorted(r.widths)
    assert r.row_base == [0, plans[0].kept_rows, plans[0].kept_rows + plans[1].kept_rows]
    for w, maps in r.maps.items():  # padding -1 becomes the sink column K
        assert maps.size(1) == w and int(maps.min()) >= 0 and int(maps.max()) <= K
        rows = sum(1 if r.tiers[g][1].shared else r.tiers[g][1].num_rows for g in r.per_id[w])
        assert maps.size(0) == rows
