"""The search split: train rows held out for a search's architecture steps, carved reproducibly."""

from __future__ import annotations

from typing import Tuple

import numpy as np

from recdim.data.prepared import SparseColumn, SplitArrays


def take_rows(split: SplitArrays, idx: np.ndarray) -> SplitArrays:
    """Rows ``idx`` of ``split`` (ascending or not), as a new :class:`SplitArrays`.

    Args:
        split: the split.
        idx: [M] int64 row indices.

    Example::

        head = take_rows(train, np.arange(100))
    """
    sparse = {}
    for name, col in split.sparse.items():
        starts = col.offsets[idx]
        lengths = col.offsets[idx + 1] - starts
        offsets = np.zeros(idx.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        pos = np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
        weights = None if col.weights is None else col.weights[pos]
        sparse[name] = SparseColumn(col.values[pos], offsets, weights)
    return SplitArrays(split.labels[idx], split.dense[idx], sparse)


def carve_search_split(train: SplitArrays, fraction: float, seed: int) -> Tuple[SplitArrays, SplitArrays]:
    """Splits ``train`` into the rows the tables train on and the search split.

    Row i goes to the search split when the i-th draw of a generator seeded with ``seed`` is below
    ``fraction``: membership depends on the seed and the row's position only, so every rank and every
    resumed run carves the same rows. Both parts keep train's row order.

    Args:
        train: the train split.
        fraction: share of rows for the search split, in (0, 1).
        seed: the carve's seed.

    Returns:
        ``(rest, search)``.

    Example::

        rest, search = carve_search_split(train, 0.1, seed=0)
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"search split fraction must be in (0, 1), got {fraction}")
    n = len(train)
    held = np.random.default_rng(seed).random(n) < fraction
    search_idx, rest_idx = np.flatnonzero(held), np.flatnonzero(~held)
    if search_idx.size == 0 or rest_idx.size == 0:
        raise ValueError(
            f"search split fraction {fraction} of {n} train rows leaves {rest_idx.size} train and "
            f"{search_idx.size} search rows: both must be non-empty"
        )
    return take_rows(train, rest_idx), take_rows(train, search_idx)
