"""Field allocation: per-field kept counts from importance (water-filling, exact totals) and within-field masks."""

import pytest
import torch

from recdim.layout.field_budget import field_kept_counts, field_magnitude_masks


def reference_counts(importance, rows, K, keep):
    """The continuous water-filling solution N_f * min(K, c * w_f), c found by a fine scan (no bisection)."""
    w = {f: max(v, 0.0) for f, v in importance.items()}
    best = None
    for step in range(1, 200001):
        c = step * 1e-3
        got = sum(rows[f] * min(K, c * w[f]) for f in rows)
        if got >= keep:
            best = c
            break
    return {f: rows[f] * min(K, best * w[f]) for f in rows}


def test_counts_follow_importance_and_sum_exactly():
    imp = {"a": 2.0, "b": 1.0, "c": -0.1, "d": 0.0}
    rows = {"a": 10, "b": 10, "c": 10, "d": 7}
    counts = field_kept_counts(imp, rows, 8, 60)
    assert counts == {"a": 40, "b": 20, "c": 0, "d": 0}
    assert sum(field_kept_counts(imp, rows, 8, 61).values()) == 61


@pytest.mark.parametrize("keep", [1, 37, 400, 1199, 1500])
def test_water_filling_caps_at_K_and_matches_a_scan(keep):
    imp = {"big": 50.0, "mid": 1.0, "small": 0.25, "noise": -1.0}
    rows = {"big": 30, "mid": 50, "small": 20, "noise": 40}
    K = 16
    counts = field_kept_counts(imp, rows, K, keep)
    assert sum(counts.values()) == keep
    assert all(0 <= counts[f] <= rows[f] * K for f in rows)
    positive_cap = sum(rows[f] * K for f in ("big", "mid", "small"))
    if keep <= positive_cap:
        want = reference_counts(imp, rows, K, keep)
        for f in rows:
            assert abs(counts[f] - want[f]) <= 1.5 + 0.01 * want[f]
        assert counts["noise"] == 0
    else:  # every useful field full, the rest to the others
        assert all(counts[f] == rows[f] * K for f in ("big", "mid", "small"))
        assert counts["noise"] == keep - positive_cap


def test_all_fields_without_importance_share_by_rows():
    counts = field_kept_counts({"a": 0.0, "b": -1.0}, {"a": 30, "b": 10}, 4, 40)
    assert counts == {"a": 30, "b": 10}


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="differ"):
        field_kept_counts({"a": 1.0}, {"a": 3, "b": 3}, 4, 4)
    with pytest.raises(ValueError, match="cannot keep 25 of 24"):
        field_kept_counts({"a": 1.0, "b": 1.0}, {"a": 3, "b": 3}, 4, 25)
    with pytest.raises(ValueError, match="'a': importance nan"):
        field_kept_counts({"a": float("nan"), "b": 1.0}, {"a": 3, "b": 3}, 4, 4)


def test_masks_keep_each_fields_largest_values():
    torch.manual_seed(0)
    values = {"a": torch.randn(9, 4), "b": torch.randn(5, 4) * 100.0}
    masks = field_magnitude_masks(values, {"a": 13, "b": 2})
    assert int(masks["a"].sum()) == 13 and int(masks["b"].sum()) == 2
    for f, m in masks.items():
        v = values[f].abs()
        assert v[m].min() >= v[~m].max()
    with pytest.raises(ValueError, match="'b': cannot keep 21"):
        field_magnitude_masks(values, {"a": 0, "b": 21})
