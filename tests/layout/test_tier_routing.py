"""Tier routing: slots by bucket then feature, widths contiguous, bucket boundaries and maps true to the plans."""

import torch

from recdim.layout.tier_routing import DROPPED_END, PAD_OFFSET, TierRouting
from recdim.prune.planner import PlannerConfig, plan_tables

K = 8


def _plans():
    g = torch.Generator().manual_seed(0)
    masks = {f: torch.rand(n, K, generator=g) < 0.5 for f, n in {"a": 40, "b": 30, "c": 5}.items()}
    masks["b"][:20, :4] = True  # a shared column set in the multi-valued feature
    masks["c"][:] = False
    return plan_tables(masks, PlannerConfig(max_tiers=3))


def test_slots_are_ordered_by_bucket_and_widths_are_contiguous():
    plans = _plans()
    r = TierRouting.build(plans, {"b"}, K)
    assert len(r.slots) == sum(len(p.tiers) for p in plans)
    assert sorted((s.feature, s.tier) for s in r.slots) == [
        (f, j) for f, p in enumerate(plans) for j in range(len(p.tiers))
    ]
    assert [(s.bucket, s.feature) for s in r.slots] == sorted((s.bucket, s.feature) for s in r.slots)
    widths = [w for w, _ in r.buckets]
    assert widths == sorted(widths, reverse=True)  # widest bucket first
    for s in r.slots:
        assert s.width == plans[s.feature].tiers[s.tier].width == r.buckets[s.bucket][0]
        assert s.pooled == (plans[s.feature].feature == "b" and plans[s.feature].tiers[s.tier].shared)
    column, covered = 0, []
    for g in r.groups:  # each width one contiguous run of slots and columns
        assert g.first_column == column and all(r.slots[k].width == g.width for k in range(g.first_slot, g.end_slot))
        covered += list(range(g.first_slot, g.end_slot))
        column += g.num_slots * g.width
    assert covered == list(range(len(r.slots))) and column == r.total_width
    assert len({g.width for g in r.groups}) == len(r.groups)
    for k, s in enumerate(r.slots):
        assert int(r.slot_of[s.bucket * len(plans) + s.feature]) == k
    assert int((r.slot_of >= 0).sum()) == len(r.slots)


def test_boundaries_and_renumbering_cover_every_kept_row_once():
    plans = _plans()
    r = TierRouting.build(plans, {"b"}, K)
    for fi, p in enumerate(plans):
        b = r.boundaries[fi].tolist()
        assert b[-1] == DROPPED_END and b[-2] == p.kept_rows and b == sorted(b)
        rows = torch.arange(-1, p.kept_rows)
        new = r.renumber(fi, p, rows)
        assert int(new[0]) == p.kept_rows  # dropped -> the dropped bucket
        assert sorted(new[1:].tolist()) == list(range(p.kept_rows))  # a permutation of the kept rows
        for j, t in enumerate(p.tiers):  # a tier's rows stay together, in order, inside its bucket
            o = p.tier_offsets[j]
            moved = new[1 + o : 1 + o + t.num_rows]
            start = r.tier_rows[fi][j]
            assert moved.tolist() == list(range(start, start + t.num_rows))
            q = next(s.bucket for s in r.slots if s.feature == fi and s.tier == j)
            assert b[q] <= start and start + t.num_rows <= b[q + 1]


def test_maps_hold_every_slots_columns_with_padding_past_the_output():
    plans = _plans()
    r = TierRouting.build(plans, {"b"}, K)
    for k, s in enumerate(r.slots):
        t = plans[s.feature].tiers[s.tier]
        maps = r.maps[s.width]
        cmap = t.column_map.view(-1, s.width).to(torch.int32)
        rows = cmap.size(0)
        base, stride = int(r.map_base[k]), int(r.map_stride[k])
        assert stride == (0 if t.shared else 1)
        got = maps[base : base + rows]
        assert torch.equal(got, cmap.masked_fill(cmap < 0, PAD_OFFSET))
    for w, maps in r.maps.items():
        kept = maps[maps != PAD_OFFSET]
        assert maps.size(1) == w and (kept.numel() == 0 or (int(kept.min()) >= 0 and int(kept.max()) < K))
