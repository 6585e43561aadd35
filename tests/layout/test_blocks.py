"""Feature blocking against a plain sort of all (feature, id) pairs."""

import json

import numpy as np
import pytest
import torch

from recdim.layout.blocks import BlockPlan, global_blocks, make_block_plan, per_table_blocks


def reference_global(counts, L):
    """Sort every (feature, id) pair by (-count, feature, id); rank p goes to block p * L // N."""
    pairs = []
    for f, c in enumerate(counts.values()):
        capped = np.minimum.accumulate(np.asarray(c, np.int64)) if len(c) else c
        pairs += [(-int(capped[i]), f, i) for i in range(len(c))]
    pairs.sort()
    N = len(pairs)
    blocks = {name: np.zeros(len(c), np.int64) for name, c in counts.items()}
    names = list(counts)
    for p, (_, f, i) in enumerate(pairs):
        blocks[names[f]][i] = next(b for b in range(L) if (b * N) // L <= p < ((b + 1) * N) // L)
    return blocks


def plan_blocks(plan, feature):
    n = plan.num_embeddings(feature)
    return plan.block_of(feature, torch.arange(n)).numpy()


def random_counts(rng, sizes, high):
    return {f"f{j}": np.sort(rng.integers(0, high, n))[::-1].copy() for j, n in enumerate(sizes)}


@pytest.mark.parametrize("L", [1, 3, 10, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_blocks_match_a_full_sort(L, seed):
    rng = np.random.default_rng(seed)
    counts = random_counts(rng, rng.integers(1, 25, 4), high=6)  # many ties
    plan = global_blocks(counts, L)
    ref = reference_global(counts, L)
    for f in counts:
        np.testing.assert_array_equal(plan_blocks(plan, f), ref[f], err_msg=f)
    sizes = np.sum([plan.block_sizes(f) for f in counts], axis=0)
    N = sum(len(c) for c in counts.values())
    assert sizes.tolist() == [((b + 1) * N) // L - (b * N) // L for b in range(L)]  # equal counts


def test_global_blocks_cap_a_rising_oov_count_and_keep_blocks_contiguous():
    counts = {"a": np.array([9, 5, 5, 1, 50]), "b": np.array([7, 7, 0])}  # "a"'s OOV (last) collects rare values
    plan = global_blocks(counts, 4)
    ref = reference_global(counts, 4)
    for f in counts:
        blocks = plan_blocks(plan, f)
        np.testing.assert_array_equal(blocks, ref[f])
        assert (np.diff(blocks) >= 0).all()
    # ties at 5 / 7 go to the earlier feature, then the smaller id
    assert plan.boundaries == ((0, 1, 2, 4, 5), (0, 1, 2, 2, 3))


def test_more_blocks_than_ids_gives_empty_blocks():
    plan = global_blocks({"a": np.array([3, 2]), "b": np.array([5])}, 7)
    assert sum(sum(plan.block_sizes(f)) for f in ("a", "b")) == 3
    assert sorted(b for f in ("a", "b") for b in plan_blocks(plan, f).tolist()) == [2, 4, 6]
    per = per_table_blocks({"a": 2, "b": 1}, 5)
    assert per.boundaries == ((0, 0, 0, 1, 1, 2), (0, 0, 0, 0, 0, 1))
    assert plan_blocks(per, "a").tolist() == [2, 4] and plan_blocks(per, "b").tolist() == [4]


def test_per_table_blocks_and_alpha_rows():
    plan = per_table_blocks({"u": 10, "i": 7}, 3)
    assert plan.boundaries == ((0, 3, 6, 10), (0, 2, 4, 7))
    assert plan.num_alpha_rows == 6 and plan.alpha_row_offset("i") == 3
    g = make_block_plan("global", {"u": np.ones(10), "i": np.ones(7)}, 3)
    assert g.num_alpha_rows == 3 and g.alpha_row_offset("i") == 0
    assert make_block_plan("per_table", {"u": np.ones(10), "i": np.ones(7)}, 3) == plan


def test_block_of_matches_boundaries_and_json_round_trip():
    plan = BlockPlan(("a",), ((0, 2, 2, 5, 9),), "global")
    assert plan.block_of("a", torch.tensor([[0, 1], [2, 8]])).tolist() == [[0, 0], [2, 3]]
    again = BlockPlan.from_json(json.loads(plan.dumps()))
    assert again == plan


def test_bad_plans_are_errors():
    with pytest.raises(ValueError):
        BlockPlan(("a",), ((1, 2),), "global")
    with pytest.raises(ValueError):
        BlockPlan(("a", "b"), ((0, 2), (0, 1, 2)), "global")
    with pytest.raises(ValueError):
        per_table_blocks({"a": 3}, 0)
