"""Dimension baselines: UE, grid, random and MDE dims (multiples of 4, budgets met, MDE by hand)."""

import numpy as np
import pytest
import torch

from recdim.config_io import ConfigError, from_dict
from recdim.layout.blocks import make_block_plan
from recdim.search.baselines import (
    BaselineConfig,
    NearestPowerOfTwo,
    baseline_dims,
    budget_for_cr,
    candidate_methods,
    fit_scale,
    grid_dims,
    mde_dims,
    parse_method,
    random_mixed_dims,
    row_dims_to_masks,
    uniform_dim_for_cr,
    uniform_dims,
)

K = 16


def zipf_counts(seed, sizes=(300, 120, 40)):
    rng = np.random.default_rng(seed)
    return {f"f{j}": np.sort(rng.zipf(1.3, n).clip(max=5000))[::-1].astype(np.int64) for j, n in enumerate(sizes)}


def assert_valid(a, budget=None):
    for f, d in a.dims.items():
        assert d.dtype == torch.int64 and d.dim() == 1
        assert bool((d % 4 == 0).all()) and int(d.min()) >= 0 and int(d.max()) <= a.embedding_dim
    if budget is not None:
        assert a.params <= budget


def test_row_dims_to_masks_is_a_prefix():
    masks = row_dims_to_masks({"u": torch.tensor([8, 4, 0, 16])}, K)
    m = masks["u"]
    assert m.shape == (4, K) and m.dtype == torch.bool
    assert m.sum(1).tolist() == [8, 4, 0, 16]
    assert m[0, :8].all() and not m[0, 8:].any()
    with pytest.raises(ValueError):
        row_dims_to_masks({"u": torch.tensor([20])}, K)


@pytest.mark.parametrize("cr, expected", [(1.0, 16), (2.0, 8), (3.0, 4), (4.0, 4)])
def test_uniform_dim_for_cr(cr, expected):
    num = {"user": 944, "item": 1683}
    d = uniform_dim_for_cr(num, K, cr)
    assert d == expected
    a = uniform_dims(num, d, K)
    assert_valid(a, budget_for_cr(num, K, cr))
    assert a.params == 2627 * d and a.bytes == 4 * a.params and a.projection_params == 0


def test_uniform_beyond_k_over_4_is_an_error():
    with pytest.raises(ValueError, match="no uniform dimension"):
        uniform_dim_for_cr({"user": 944}, K, 5.0)
    with pytest.raises(ValueError):
        uniform_dims({"user": 10}, 6, K)


def test_grid_keeps_dims_within_k_and_budget():
    num = {"user": 944, "item": 1683}
    assert grid_dims(num, K, range(4, 65, 4)) == [4, 8, 12, 16]
    assert grid_dims(num, K, range(4, 65, 4), cr=2.0) == [4, 8]
    assert candidate_methods("grid", BaselineConfig(grid=(4, 8, 12)), num, K, 1.5) == ["ue@4", "ue@8"]
    assert candidate_methods("random", BaselineConfig(random_samples=3), num, K, 2.0) == [
        "random@0",
        "random@1",
        "random@2",
    ]
    assert candidate_methods("dnis", BaselineConfig(), num, K, 2.0) == ["dnis"]
    with pytest.raises(ValueError):
        grid_dims(num, K, (32, 64))


@pytest.mark.parametrize("blocking", ["global", "per_table"])
@pytest.mark.parametrize("cr", [1.5, 3.0, 6.0])
def test_random_dims_descend_meet_the_budget_and_repeat(blocking, cr):
    counts = zipf_counts(0)
    plan = make_block_plan(blocking, counts, 5)
    num = {f: len(c) for f, c in counts.items()}
    budget = budget_for_cr(num, K, cr)
    for sample in range(4):
        a = random_mixed_dims(plan, K, budget, seed=7, sample=sample)
        assert_valid(a, budget)
        assert a.method == f"random@{sample}"
        for d in a.dims.values():  # ids are frequency-sorted: dims never grow along the ids
            assert bool((d[1:] <= d[:-1]).all())
        again = random_mixed_dims(plan, K, budget, seed=7, sample=sample)
        assert all(torch.equal(a.dims[f], again.dims[f]) for f in a.dims)
    shapes = {tuple(random_mixed_dims(plan, K, budget, 7, s).info["shape"]) for s in range(6)}
    assert len(shapes) > 1


@pytest.mark.parametrize("blocking", ["global", "per_table"])
def test_random_fill_spends_the_budget_the_scale_leaves(blocking):
    counts = zipf_counts(4, sizes=(900, 400, 100))
    plan = make_block_plan(blocking, counts, 4)
    num = {f: len(c) for f, c in counts.items()}
    biggest = max(max(plan.block_sizes(f)) for f in plan.features) if blocking == "per_table" else sum(num.values())
    for cr in (2.0, 3.0):
        budget = budget_for_cr(num, K, cr)
        for sample in range(5):
            a = random_mixed_dims(plan, K, budget, seed=1, sample=sample)
            scaled, filled = np.array(a.info["scaled_dims"]), np.array(a.info["block_dims"])
            assert (filled >= scaled).all() and a.params <= budget
            if blocking == "per_table":  # one more step of any block would not fit (or break the order)
                assert a.params > budget - 4 * biggest


def test_random_scaling_uses_the_budget():
    counts = zipf_counts(1)
    plan = make_block_plan("per_table", counts, 4)
    num = {f: len(c) for f, c in counts.items()}
    # CR 1: everything fits at K, so the largest scale gives every block K.
    a = random_mixed_dims(plan, K, budget_for_cr(num, K, 1.0), seed=0, sample=0)
    assert all(bool((d == K).all()) for d in a.dims.values())


def test_fit_scale_finds_the_largest_feasible_lambda_past_a_cost_drop():
    # One segment of 10 rows, K = 16, projections counted:
    #   d = 4: 40 + 4*16 = 104;  d = 8: 80 + 128 = 208;  d = 12: 120 + 192 = 312;  d = 16: 160 (no projection).
    # Budget 200: d = 4 and d = 16 fit, 8 and 12 do not; the largest feasible lambda gives 16 (bisection
    # from below would stop at 4).
    fit = fit_scale(np.array([1.0]), np.array([10]), K, 200, projections=True)
    assert fit.dims.tolist() == [16] and fit.cost == 160
    assert fit_scale(np.array([1.0]), np.array([10]), K, 150, projections=True).dims.tolist() == [4]
    with pytest.raises(ValueError, match="below the smallest layout"):
        fit_scale(np.array([1.0]), np.array([10]), K, 100, min_dim=4, projections=True)


def mde_example():
    # Feature a: 200 ids, ids 0..99 seen 90 times each, ids 100..199 seen 10 times each.
    # Feature b: 100 ids, each seen 10 times.  Per-table blocking, L = 2:
    #   blocks a0 = a[0:100], a1 = a[100:200], b0 = b[0:50], b1 = b[50:100]; rows 100, 100, 50, 50.
    counts = {"a": np.array([90] * 100 + [10] * 100), "b": np.array([10] * 100)}
    plan = make_block_plan("per_table", counts, 2)
    return counts, plan


def test_mde_matches_a_hand_computed_example():
    counts, plan = mde_example()
    # Total train occurrences T = 9000 + 1000 + 1000 = 11000; block popularity p = mean count / T:
    #   p_a0 = 90/T, p_a1 = p_b0 = p_b1 = 10/T.  With alpha = 0.5, w = sqrt(p): w_a0 = 3u, others u
    #   (u = sqrt(10/T)).  Write x = lambda * u: d_a0 = round4(3x), the others round4(x), at least 4.
    # Uniform params 300 * 16 = 4800; CR 2 -> budget 2400 = sum rows * d + 16 * d per block with 0 < d < 16.
    #   all 4 (x < 2):        values 300*4 = 1200,                   projections 16*(4+4+4+4) = 256 -> 1456
    #   a0 = 8 (x >= 2):      values 800 + 400 + 200 + 200 = 1600,  projections 16*(8+4+4+4) = 320 -> 1920
    #   a0 = 12 (x >= 10/3):  values 1200 + 400 + 200 + 200 = 2000, projections 16*(12+4+4+4) = 384 -> 2384  fits
    #   a0 = 16 (x >= 14/3):  values 1600 + 400 + 200 + 200 = 2400, projections 16*(4+4+4) = 192   -> 2592  over
    #   others 8 (x >= 6):    values 1600 + 800 + 400 + 400 = 3200 + ...                               over
    # So MDE picks a0 = 12, a1 = b0 = b1 = 4: 2384 params (2000 values + 384 projections), 9536 bytes.
    # Counting values only (the DLRM code's budget) would have picked a0 = 16 (2400 values) and stored 2592.
    a = mde_dims(counts, plan, K, budget_for_cr({"a": 200, "b": 100}, K, 2.0), alpha=0.5, min_dim=4)
    assert budget_for_cr({"a": 200, "b": 100}, K, 2.0) == 2400
    assert a.dims["a"][:100].unique().tolist() == [12] and a.dims["a"][100:].unique().tolist() == [4]
    assert a.dims["b"].unique().tolist() == [4]
    assert a.value_params == 2000 and a.projection_params == 384 and a.params == 2384
    assert a.bytes == 2384 * 4 and a.projection_bytes == 384 * 4
    assert [(p.feature, p.start, p.stop, p.dim) for p in a.projections] == [
        ("a", 0, 100, 12),
        ("a", 100, 200, 4),
        ("b", 0, 50, 4),
        ("b", 50, 100, 4),
    ]
    assert int(sum(m.sum() for m in a.masks().values())) == a.value_params
    assert abs(a.info["lambda"] * np.sqrt(10 / 11000) - 10 / 3) < 1e-9  # x = 10/3, where a0 reaches 12


def test_mde_power_of_two_and_alpha_zero():
    counts, plan = mde_example()
    budget = 2400
    # Power-of-two rounding: a0 = 8 from 3x >= 2**2.5 (cost 1920); a0 = 16 from 3x >= 2**3.5 costs 2592.
    a = mde_dims(counts, plan, K, budget, alpha=0.5, rounding=NearestPowerOfTwo())
    assert a.dims["a"][0].item() == 8 and a.params == 1920
    # alpha = 0: every block has the same weight, so one dimension: 300 d + 4 * 16 d <= 2400 -> d = 4
    # (UE at the same CR stores d = 8: the projections are MDE's price).
    a0 = mde_dims(counts, plan, K, budget, alpha=0.0)
    assert {int(d) for t in a0.dims.values() for d in t.unique()} == {4} and a0.params == 1456
    # Table granularity (one block per table) through the config's blocks.
    cfg = BaselineConfig(mde_alpha=0.5, num_blocks=1, blocking="per_table")
    t = baseline_dims("mde", cfg, counts, K, 2.0)
    assert_valid(t, 2400)
    assert len(t.projections) == sum(1 for d in (t.dims["a"][0], t.dims["b"][0]) if 0 < d < K)


@pytest.mark.parametrize("cr", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("pow2", [False, True])
def test_mde_budget_met_on_zipf_counts(cr, pow2):
    counts = zipf_counts(2, sizes=(3000, 1200, 400))
    cfg = BaselineConfig(num_blocks=6, blocking="global", mde_pow2=pow2)
    num = {f: len(c) for f, c in counts.items()}
    a = baseline_dims("mde", cfg, counts, K, cr)
    assert_valid(a, budget_for_cr(num, K, cr))
    assert a.summary()["projection_bytes"] == a.projection_bytes
    for d in a.dims.values():
        assert int(d.min()) >= cfg.mde_min_dim


@pytest.mark.parametrize("cr", [4.0, 10.0, 20.0])
def test_mde_below_its_floor_drops_the_least_popular_blocks(cr):
    # K = 16, min_dim 4: CR 4 leaves exactly 4 values per row and nothing for the projections, so the floor
    # drops to 0 and the rarest blocks go first; the budget is met at every CR.
    counts = zipf_counts(2, sizes=(3000, 1200, 400))
    num = {f: len(c) for f, c in counts.items()}
    a = baseline_dims("mde", BaselineConfig(num_blocks=6), counts, K, cr)
    assert_valid(a, budget_for_cr(num, K, cr))
    assert a.info["min_dim"] == 0 and a.info["min_dim_lowered_from"] == 4
    blocks = a.info["blocks"]  # [feature, start, stop, p, d]
    dropped = [b for b in blocks if b[4] == 0]
    kept = [b for b in blocks if b[4] > 0]
    assert dropped and kept and max(b[3] for b in dropped) <= min(b[3] for b in kept)
    with pytest.raises(ValueError, match="below the smallest layout"):
        from recdim.search.baselines.mde import mde_dims

        mde_dims(counts, make_block_plan("global", counts, 6), K, budget_for_cr(num, K, 4.0), min_dim=4)


def test_baseline_dims_dispatch_and_names():
    counts = zipf_counts(3)
    cfg = BaselineConfig(num_blocks=3, blocking="per_table")
    assert baseline_dims("ue", cfg, counts, K, 2.0).info["uniform_dim"] == 8
    assert baseline_dims("ue@4", cfg, counts, K, 2.0).params == 460 * 4
    # ue@0: every field at 0 dims (PEP-0's comparison point), at any budget
    zero = baseline_dims("ue@0", cfg, counts, K, 1000.0)
    assert zero.params == 0 and all(int(d.max()) == 0 for d in zero.dims.values())
    with pytest.raises(ValueError, match="exceed the budget"):
        baseline_dims("ue@16", cfg, counts, K, 2.0)
    assert baseline_dims("random@2", cfg, counts, K, 2.0).method == "random@2"
    for name in ("grid", "random", "nope"):
        with pytest.raises(ValueError):
            baseline_dims(name, cfg, counts, K, 2.0)
    assert parse_method("ue@8") == ("ue", 8) and parse_method("mde") == ("mde", None)
    with pytest.raises(ValueError):
        parse_method("random@x")


def test_baseline_config_is_strict():
    cfg = from_dict(
        BaselineConfig, {"grid": [4, 8], "mde_alpha": 0.2, "blocking": "per_table"}, prefix="search.baseline"
    )
    assert cfg.grid == (4, 8) and cfg.mde_alpha == 0.2
    with pytest.raises(ConfigError):
        from_dict(BaselineConfig, {"grid": [6]})
    with pytest.raises(ConfigError):
        from_dict(BaselineConfig, {"mde_min": 4})
