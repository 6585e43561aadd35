"""The search split: disjoint from the rows the tables train on, together exactly train, reproducible."""

import numpy as np
import pytest

from recdim.data.prepared import SparseColumn, SplitArrays
from recdim.data.search_split import carve_search_split, take_rows


def _split(n: int) -> SplitArrays:
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 4, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.arange(offsets[-1], dtype=np.int64)  # id = position: rows are easy to check
    return SplitArrays(
        labels=np.arange(n, dtype=np.float32),  # label = row index
        dense=np.arange(n, dtype=np.float32)[:, None].repeat(2, 1),
        sparse={
            "multi": SparseColumn(values, offsets, values.astype(np.float32) / 10),
            "single": SparseColumn(np.arange(n, dtype=np.int64) * 7, np.arange(n + 1, dtype=np.int64)),
        },
    )


def _rows(split: SplitArrays, name: str):
    col = split.sparse[name]
    return [col.values[col.offsets[i] : col.offsets[i + 1]].tolist() for i in range(len(split))]


def test_take_rows_keeps_every_column_of_every_row():
    train = _split(50)
    idx = np.array([7, 3, 3, 49, 0])
    part = take_rows(train, idx)
    assert part.labels.tolist() == idx.tolist() and part.dense[:, 1].tolist() == idx.tolist()
    full = _rows(train, "multi")
    assert _rows(part, "multi") == [full[i] for i in idx]
    expect = np.array([v for i in idx for v in full[i]], dtype=np.float32) / 10
    np.testing.assert_array_equal(part.sparse["multi"].weights, expect)
    assert _rows(part, "single") == [[7 * i] for i in idx] and part.sparse["single"].weights is None


def test_carve_is_a_reproducible_partition():
    train = _split(1000)
    rest, search = carve_search_split(train, 0.2, seed=3)
    assert sorted(rest.labels.tolist() + search.labels.tolist()) == list(range(1000))
    assert 120 < len(search) < 280
    assert rest.labels.tolist() == sorted(rest.labels.tolist())  # train's order kept
    again, search2 = carve_search_split(train, 0.2, seed=3)
    assert search2.labels.tolist() == search.labels.tolist()
    _, other = carve_search_split(train, 0.2, seed=4)
    assert other.labels.tolist() != search.labels.tolist()
    full = _rows(train, "multi")
    assert _rows(search, "multi") == [full[int(i)] for i in search.labels]


def test_carve_rejects_a_fraction_that_leaves_a_part_empty():
    with pytest.raises(ValueError, match="fraction"):
        carve_search_split(_split(10), 1.0, 0)
    with pytest.raises(ValueError, match="both must be non-empty"):
        carve_search_split(_split(1), 0.5, 0)
