"""The incremental survivor count against a full count after every step: one process and 2 gloo ranks,
kept keys and binned keys, with the rebuilds (grid run out, offset off the grid, a shard written)."""

from __future__ import annotations

from typing import Dict, List, Tuple

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recdim.config import TrainConfig
from recdim.modules.table_init import init_tables
from recdim.modules.threshold import ThresholdEmbeddingProvider, make_thresholds
from recdim.search.kept_counter import FrozenKeys, KeptCounter, OffsetGrid, fused_sparse_tables
from recdim.search.pep import LinearRamp, upcoming_offsets
from recdim.search.pep_tables import count_nonzeros, init_threshold_tables, table_pieces
from tests.dist_utils import run_ranks

K = 8
NUM = {"b": 40, "a": 30, "c": 25}  # "a": bags, "b" and "c": single-valued
SINGLE = ("b", "c")
RATE = 0.1


def test_grid_bins_are_exact() -> None:
    """Bins equal a sorted search for keys on, next to and between the (float32) offsets, and the extremes."""
    q = torch.tensor([0.37 * i for i in range(300)], dtype=torch.float32).double()
    grid = OffsetGrid(q.tolist())
    assert len(grid) == 300
    g = torch.Generator().manual_seed(0)
    keys = torch.cat(
        [
            torch.randn(5000, generator=g, dtype=torch.float64) * 60,
            q,
            torch.nextafter(q, torch.full_like(q, 1e9)),
            torch.nextafter(q, torch.full_like(q, -1e9)),
            torch.tensor([float("inf"), float("-inf"), 1e300, -1e300], dtype=torch.float64),
        ]
    )
    assert torch.equal(grid.bins(keys.view(-1, 4)).view(-1).long(), torch.searchsorted(grid.offsets, keys))
    assert int(grid.bins(torch.tensor([float("nan")], dtype=torch.float64))) == 0  # NaN survives nowhere
    constant = OffsetGrid([0.5] * 4)
    assert constant.bins(torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64)).tolist() == [0, 0, 4]
    # only the evenly spaced prefix is kept (the next offsets would need a search)
    assert len(OffsetGrid([0.0, 0.0, 0.0, 0.1, 0.2])) == 3 and len(OffsetGrid([0.0, 1.0, 2.0, 4.0])) == 3
    assert grid.index(float(q[5]), 3) == 5 and grid.index(float(q[5]), 6) is None


def test_upcoming_offsets_follow_the_ramp() -> None:
    ramp = LinearRamp(0.1, start=3)
    ahead = upcoming_offsets([ramp], step=2, every=2, offset=0.0)
    assert ahead is not None
    expected = [float(torch.tensor(ramp.offset(s), dtype=torch.float32)) for s in (4, 6, 8)]
    assert ahead(3) == expected
    assert upcoming_offsets([], 5, 1, 0.25)(2) == [0.25, 0.25]  # nothing moves the offset


def _batches(rank: int, steps: int, batch: int) -> List[KeyedJaggedTensor]:
    g = torch.Generator().manual_seed(100 + rank)
    out = []
    for _ in range(steps):
        lengths = {f: torch.ones(batch, dtype=torch.int32) for f in SINGLE}
        lengths["a"] = torch.randint(0, 3, (batch,), generator=g, dtype=torch.int32)
        # skewed ids: repeats within a batch, rows never looked up
        values = {f: (torch.rand(int(lengths[f].sum()), generator=g) ** 3 * n).long() for f, n in NUM.items()}
        keys = list(NUM)
        out.append(
            KeyedJaggedTensor(
                keys=keys, values=torch.cat([values[f] for f in keys]), lengths=torch.cat([lengths[f] for f in keys])
            )
        )
    return out


def _run(rank: int, world: int, stored_limit: int, unique_fraction: float) -> List[Tuple[int, int, int]]:
    """A sharded provider trained with fused row-wise Adagrad under a ramp: per step, the counter's count,
    the full count and the counter's rebuilds so far."""
    from recdim.train.distributed import init_distributed, shard_model

    ctx = init_distributed("cpu")
    provider = ThresholdEmbeddingProvider(
        NUM,
        K,
        make_thresholds("feature_dimension", list(NUM), K, -4.0),
        device=torch.device("meta"),
        single_valued=SINGLE,
        unique_fraction=unique_fraction,
    )
    cfg = TrainConfig(embedding_optimizer="rowwise_adagrad", embedding_lr=0.3, sharding="table_wise", device="cpu")
    dmp = shard_model(provider, cfg, ctx)
    init_tables(dmp, 0, 0.1)
    live = dmp.module
    init_threshold_tables(live)
    assert fused_sparse_tables(live)
    counter = KeptCounter(live, horizon=6, stored_limit=stored_limit)
    ramp = LinearRamp(RATE)
    out = []
    for step, kjt in enumerate(_batches(rank, 24, 16), start=1):
        values = dmp(kjt).values()
        (values * torch.linspace(-1.0, 1.0, values.size(1))).sum().backward()
        ramp.after_step(live, step)
        if step == 9:  # the offset leaves the schedule the counter was told about
            live.threshold_offset.add_(0.05)
        if step == 15:  # a shard written outside the fused optimizer (as a checkpoint load would)
            with torch.no_grad():
                next(table_pieces(live))[2][:2].mul_(0.5)
        offset = float(live.threshold_offset)
        nnz, total = counter.count(offset, upcoming_offsets([ramp], step, 1, offset))
        full, full_total = count_nonzeros(live)
        assert total == full_total
        # kept keys answer any offset (the snapshot's bisection) as a full count does; binned keys do not
        assert counter.answers_any_offset() == (stored_limit > 0)
        if stored_limit > 0:
            for shift in (-0.3, -1e-3, 0.0, 0.02, 0.7):
                live.threshold_offset.fill_(offset + shift)
                probe = float(live.threshold_offset)
                assert counter.count_at(probe) == count_nonzeros(live)[0], (step, shift)
            live.threshold_offset.fill_(offset)
        if step % 6 == 0:  # keys computed once answer any offset as a full count does
            frozen = FrozenKeys.build(live)
            assert frozen is not None and FrozenKeys.build(live, limit=0) is None
            for shift in (-0.3, 0.0, 0.7):
                live.threshold_offset.fill_(offset + shift)
                assert frozen.count_at(float(live.threshold_offset)) == count_nonzeros(live)[0], (step, shift)
            live.threshold_offset.fill_(offset)
        out.append((nnz, full, counter.rebuilds))
    return out


@pytest.mark.parametrize("unique_fraction", [0.0, 1.0])
@pytest.mark.parametrize("stored_limit", [1 << 20, 0])
def test_counter_equals_full_count_every_step(stored_limit: int, unique_fraction: float) -> None:
    """Kept keys (``stored_limit`` large) and binned keys (0): the same count as a full count at every
    step; binned keys rebuild when the 6-offset grid runs out, the offset leaves it, or a shard is written."""
    rows = _run(0, 1, stored_limit, unique_fraction)
    for nnz, full, _ in rows:
        assert nnz == full
    assert rows[0][1] > rows[-1][1]  # the ramp prunes
    rebuilds = [r for _, _, r in rows]
    assert rebuilds[-1] >= 3 if stored_limit == 0 else rebuilds[-1] == 2  # kept keys: start and the write


def _two_ranks(rank: int, world: int) -> List[Tuple[int, int, int]]:
    return _run(rank, world, 0, 1.0) + _run(rank, world, 1 << 20, 0.0)


@pytest.mark.multiprocess
def test_counter_equals_full_count_on_two_ranks() -> None:
    """Each rank counts its shards after gathering the rows every rank's batches touched; the all-reduced
    count equals the full count on both ranks at every step."""
    first, second = run_ranks(2, _two_ranks)
    assert first == second
    for nnz, full, _ in first:
        assert nnz == full


def test_unsharded_or_dense_tables_are_not_incremental() -> None:
    """Without a fused sparse optimizer rows change without being looked up: no incremental count."""
    from recdim.train.distributed import init_distributed, shard_model

    provider = ThresholdEmbeddingProvider(NUM, K, make_thresholds("feature_dimension", list(NUM), K, -4.0))
    assert provider.keyed_survival and not fused_sparse_tables(provider)
    ctx = init_distributed("cpu")
    dense = ThresholdEmbeddingProvider(
        NUM, K, make_thresholds("feature_dimension", list(NUM), K, -4.0), device=torch.device("meta")
    )
    dmp = shard_model(dense, TrainConfig(embedding_optimizer="adam", device="cpu"), ctx)
    assert not fused_sparse_tables(dmp.module)
    with pytest.raises(ValueError, match="known inverse"):
        KeptCounter(ThresholdEmbeddingProvider(NUM, K, make_thresholds("dimension", list(NUM), K, -4.0)))


def _touched_rows(provider: ThresholdEmbeddingProvider, kjt: KeyedJaggedTensor) -> Dict[str, List[int]]:
    provider.track_touched(True)
    provider(kjt).values().sum().backward()
    return {k: v.tolist() for k, v in provider.take_touched().items()}


@pytest.mark.parametrize("unique_fraction", [0.0, 1.0])
def test_take_touched_lists_every_looked_up_row_once(unique_fraction: float) -> None:
    provider = ThresholdEmbeddingProvider(
        NUM,
        K,
        make_thresholds("feature_dimension", list(NUM), K, -4.0),
        single_valued=SINGLE,
        unique_fraction=unique_fraction,
    )
    kjt = _batches(0, 1, 16)[0]
    touched = _touched_rows(provider, kjt)
    for f, jt in kjt.to_dict().items():
        assert sorted(touched[f"t_{f}"]) == sorted(set(jt.values().tolist()))
    assert provider.take_touched() == {}  # taken
    with torch.no_grad():
        provider(kjt)
    assert provider.take_touched() == {}  # lookups without gradients touch nothing


@pytest.mark.parametrize("gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("spacing", [0.37, 1e-3, 1e-6])
def test_screened_bins_equal_exact_bins(gate, spacing) -> None:
    """The float32-screened bins equal the bins of the float64 keys, for values whose keys lie on, next to
    and between the offsets, and for 0, |V| >= 1, subnormals and NaN."""
    from recdim.modules.soft_threshold import GATES, survival_keys

    g_fn = GATES[gate]
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(4000, 8, generator=g) * 2 - 6).float()
    q = torch.tensor([-3.0 + spacing * i for i in range(60)], dtype=torch.float32).double()
    grid = OffsetGrid(q.tolist())
    # Values whose keys land exactly on an offset and one float32 ulp either side of it.
    pick = q[torch.randint(0, len(q), (4000, 8), generator=g)]
    on = g_fn((s.double() + pick)).float()
    values = torch.stack([on, torch.nextafter(on, torch.ones_like(on)), torch.nextafter(on, torch.zeros_like(on))])
    values = values * torch.where(torch.rand(values.shape, generator=g) < 0.5, -1.0, 1.0)
    rand = torch.randn(4000, 8, generator=g) * 0.05
    special = torch.tensor([0.0, 1.0, -1.0, 2.0, 1e-40, -1e-40, float("nan"), 1e-3], dtype=torch.float32)
    for v, t in [(x, s) for x in values] + [(rand, s), (special.expand(4000, 8).contiguous(), s)]:
        exact = grid.bins(survival_keys(v, t, g_fn))
        assert torch.equal(grid.screened_bins(v, t, g_fn), exact)
