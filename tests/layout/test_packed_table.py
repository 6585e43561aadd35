"""Packed tables: every mask kind roundtrips to the same plan and values; a plan placing rows off the rule
keeps its placement; the stored bytes sit at or below the floor; contradicting tensors are refused."""

import pytest
import torch

from recdim.export.packed_plan import unpack_plan
from recdim.layout.packed_table import PackedTable, pack_table
from recdim.layout.tier_plan import DenseRemap, TablePlan, TierPlan
from recdim.layout.tier_values import masked_table, tier_values
from recdim.prune.planner import PlannerConfig, plan_table


def masks(K: int, g: torch.Generator):
    N = 400
    dims = (torch.arange(N, dtype=torch.float64) + 1).pow(-0.3).mul(K * 0.9).floor().long()
    return {
        "prefix": torch.arange(K) < dims.unsqueeze(1),
        "sets": torch.rand(N, K, generator=g).argsort(dim=1) < dims.unsqueeze(1) // 3,
        "bits": torch.rand(N, K, generator=g) < 0.5,
    }


def same_plan(a: TablePlan, b: TablePlan) -> bool:
    return (
        [(t.name, t.feature_name, t.width, t.num_rows) for t in a.tiers]
        == [(t.name, t.feature_name, t.width, t.num_rows) for t in b.tiers]
        and all(torch.equal(x.column_map, y.column_map) for x, y in zip(a.tiers, b.tiers))
        and torch.equal(a.global_rows(), b.global_rows())
        and a.remap.kind == b.remap.kind
    )


@pytest.mark.parametrize("K", [16, 72])
def test_every_mask_kind_roundtrips_to_the_same_plan(K):
    g = torch.Generator().manual_seed(K)
    for want, mask in masks(K, g).items():
        plan = plan_table(mask, "t_x", "x", PlannerConfig(max_tiers=3))
        values = tier_values(plan, torch.randn(mask.shape, generator=g))
        packed = pack_table(plan, values)
        assert packed.mask_kind == (want if K <= 64 or want == "prefix" else "bits"), want
        assert packed.tier_index is None  # the planner's placement is the rule
        again = PackedTable.from_tensors(packed.header(), packed.tensors())
        plan2, values2 = unpack_plan(again)
        assert same_plan(plan, plan2)
        assert all(torch.equal(a, b) for a, b in zip(values, values2))
        b = plan.bytes()
        assert packed.stored_bytes()["total"] <= b.floor + packed.kept.nbytes


def test_a_plan_placing_rows_off_the_rule_keeps_its_placement():
    K = 8
    cm0 = torch.tensor([[0, 1, -1, -1, -1, -1, -1, -1], [3, 5, -1, -1, -1, -1, -1, -1]], dtype=torch.int8)
    cm1 = torch.tensor([[2, -1, -1, -1], [0, 1, 2, 3]], dtype=torch.int8)
    plan = TablePlan(
        "t_x",
        "x",
        6,
        K,
        (TierPlan("t_x__tier0", "x@@tier0", 8, 2, cm0), TierPlan("t_x__tier1", "x@@tier1", 4, 2, cm1)),
        DenseRemap(torch.tensor([0, 2, 1, 3, -1, -1], dtype=torch.int8)),
    )
    values = tier_values(plan, torch.randn(6, K))
    packed = pack_table(plan, values, "float32")
    assert packed.tier_index is not None and packed.header()["tier_assignment"] == "explicit"
    plan2, values2 = unpack_plan(PackedTable.from_tensors(packed.header(), packed.tensors()))
    assert same_plan(plan, plan2) and all(torch.equal(a, b) for a, b in zip(values, values2))


def test_rows_keeping_only_padding_are_dropped():
    cm = torch.tensor([[0, -1, -1, -1], [-1, -1, -1, -1]], dtype=torch.int8)
    plan = TablePlan(
        "t_x", "x", 3, 4, (TierPlan("t_x__tier0", "x@@tier0", 4, 2, cm),), DenseRemap(torch.tensor([0, -1, 1]))
    )
    values = [torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])]
    plan2, values2 = unpack_plan(pack_table(plan, values))
    assert plan2.kept_rows == 1
    assert torch.equal(masked_table(plan2, values2), masked_table(plan, values))


def test_tensors_that_contradict_the_header_are_refused():
    g = torch.Generator().manual_seed(0)
    mask = masks(16, g)["sets"]
    plan = plan_table(mask, "t_x", "x")
    packed = pack_table(plan, tier_values(plan, torch.randn(mask.shape, generator=g)), "int8")
    header, tensors = packed.header(), packed.tensors()
    cases = [
        (dict(header, nnz=header["nnz"] + 1), tensors, "values"),
        (
            dict(header, kept_rows=header["kept_rows"] - 1, dropped_rows=header["dropped_rows"] + 1),
            tensors,
            "manifest says",
        ),
        (dict(header, mask="bits"), tensors, "lengths"),
        (header, {**tensors, "extra": torch.zeros(1)}, "not described"),
        (header, {k: v for k, v in tensors.items() if k != "scale"}, "'scale' missing"),
        (header, {**tensors, "values": tensors["values"].float()}, "'values' is float32"),
        (dict(header, tiers=[dict(t, rows=t["rows"] + 1) for t in header["tiers"]]), tensors, "holds"),
    ]
    for h, t, msg in cases:
        with pytest.raises(ValueError, match=msg):
            PackedTable.from_tensors(h, t)
