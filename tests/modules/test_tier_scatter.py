"""TierScatter equals a plain per-bag loop over column maps, forward and backward, for both scatter kinds, on
the native kernels and on the eager path; padding slots get zero gradient."""

import pytest
import torch

from recdim.layout.tier_routing import PAD_OFFSET, TierRouting
from recdim.modules.tier_scatter import MAX_RUNS, TierScatter, column_runs, fill_padding
from recdim.native import native_ops_available
from recdim.prune.planner import PlannerConfig, plan_tables

K = 8


@pytest.fixture(params=["native", "eager"])
def path(request, monkeypatch):
    if request.param == "native" and not native_ops_available():
        pytest.skip("native kernels unavailable")
    if request.param == "eager":
        monkeypatch.setenv("RECDIM_NATIVE", "0")
    return request.param


def test_fill_padding_uses_unkept_columns():
    filled, valid = fill_padding(torch.tensor([[0, 1, -1, -1], [3, 5, 6, PAD_OFFSET]]), 8)
    assert filled.tolist() == [[0, 1, 2, 3], [3, 5, 6, 0]]
    assert valid.tolist() == [[True, True, False, False], [True, True, True, False]]


def test_column_runs():
    assert column_runs([0, 1, 2, 5, 6, -1]) == ((0, 0, 3), (5, 3, 2))
    assert column_runs([3, 1, 2]) == ((3, 0, 1), (1, 1, 2))
    assert column_runs([-1, -1]) == ()


def _routing(K=K):
    g = torch.Generator().manual_seed(0)
    masks = {
        "a": torch.rand(30, K, generator=g) < 0.5,  # per-row maps
        "b": torch.zeros(40, K, dtype=torch.bool),  # prefix blocks: shared single runs
        "c": torch.zeros(20, K, dtype=torch.bool),  # a scattered shared set: many runs
    }
    masks["b"][:10, :8], masks["b"][10:30, :3] = True, True
    masks["c"][:15, ::2] = True
    return TierRouting.build(plan_tables(masks, PlannerConfig(max_tiers=3)), set(), K)


@pytest.mark.parametrize("K", [K, 136])  # int8 / int16 flat maps
@pytest.mark.parametrize("accumulate", [False, True])
def test_scatter_matches_per_bag_loop(accumulate, K, path):
    routing = _routing(K)
    scatter = TierScatter(routing)
    assert {p.runs is None for p in scatter.pieces(_columns(routing))} == {True, False}  # both kinds run
    assert any(r is not None and len(r) <= MAX_RUNS for r in scatter._runs)
    g = torch.Generator().manual_seed(1)
    T, S, W, R = len(routing.slots), 6, routing.total_width, 10
    rows = torch.randint(0, R + 1, (T, S), generator=g)  # R: the sink
    if not accumulate:  # every output row at most once
        perm = torch.randperm(T * S, generator=g) % (R + 8)
        rows = torch.where(perm < R, perm, torch.full_like(perm, R)).view(T, S)
        flat = rows.view(-1)
        for r in range(R):
            hits = (flat == r).nonzero().view(-1)
            flat[hits[1:]] = R
    map_row = torch.zeros(T, S, dtype=torch.int64)
    for k in range(T):
        size = routing.maps[routing.slots[k].width].size(0)
        base, stride = int(routing.map_base[k]), int(routing.map_stride[k])
        map_row[k] = base + stride * torch.randint(0, max(1, (size - base) if stride else 1), (S,), generator=g)
    values = torch.randn(S, W, generator=g)
    col = 0
    for k, s in enumerate(routing.slots):  # padding slots of a tier hold exact zeros, as tier tables do
        pad = routing.maps[s.width][map_row[k]] >= K
        values[:, col : col + s.width][pad] = 0.0
        col += s.width
    values.requires_grad_(True)
    out = scatter(values, rows, map_row, _columns(routing), R, accumulate)

    ref = torch.zeros(R + 1, K)
    col = 0
    for k, s in enumerate(routing.slots):
        maps = routing.maps[s.width]
        for b in range(S):
            for j, c in enumerate(maps[map_row[k, b]].tolist()):
                if 0 <= c < K:
                    ref[rows[k, b], c] += values.detach()[b, col + j]
        col += s.width
    torch.testing.assert_close(out, ref[:R], rtol=0, atol=1e-6)

    proj = torch.randn(R, K, generator=g)
    (out * proj).sum().backward()
    expect = torch.zeros(S, W)
    col = 0
    for k, s in enumerate(routing.slots):
        maps = routing.maps[s.width]
        for b in range(S):
            r = int(rows[k, b])
            for j, c in enumerate(maps[map_row[k, b]].tolist()):
                if 0 <= c < K and r < R:
                    expect[b, col + j] = proj[r, c]
        col += s.width
    real = (rows < R).t().repeat_interleave(torch.tensor([s.width for s in routing.slots]), dim=1)
    # Real bags: exact, padding slots of a tier zero; padding bags are empty, the kernel drops theirs.
    torch.testing.assert_close(values.grad[real], expect[real], rtol=0, atol=0)


def _columns(routing):
    out, c = [], 0
    for s in routing.slots:
        out.append(c)
        c += s.width
    return out


def test_scatter_checks_width():
    routing = _routing()
    with pytest.raises(ValueError, match="columns"):
        idx = torch.zeros(1, 2, dtype=torch.int64)
        TierScatter(routing)(torch.zeros(2, 3), idx, idx, [0], 4, False)
