"""Turns a split into ``torchrec.datasets.utils.Batch``es, partitioned per rank and shuffled by seed."""

from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recdim.data.prepared import SparseColumn, SplitArrays


def gather_rows(col: SparseColumn, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Values, lengths and weights of rows ``idx`` of a CSR column.

    Args:
        col: the column.
        idx: [B] row indices.

    Returns:
        (values [nnz], lengths [B], weights [nnz] or None).
    """
    starts = col.offsets[idx]
    lengths = col.offsets[idx + 1] - starts
    if lengths.size and lengths.min() == 1 and lengths.max() == 1:
        pos = starts
    else:
        out_offsets = np.cumsum(lengths) - lengths
        pos = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - out_offsets, lengths)
    weights = None if col.weights is None else col.weights[pos]
    return col.values[pos], lengths, weights


def make_batch(data: SplitArrays, feature_names: Sequence[str], idx: np.ndarray, weighted: bool = False) -> Batch:
    """The Batch of rows ``idx``: dense [B, D], a KeyedJaggedTensor over ``feature_names``, labels [B].

    Args:
        data: split arrays.
        feature_names: KJT keys, in order.
        idx: [B] row indices.
        weighted: emit per-value weights (1.0 for unweighted features).

    Example::

        batch = make_batch(train, ["user_id", "item_id"], np.arange(4))
    """
    values: List[np.ndarray] = []
    lengths: List[np.ndarray] = []
    weights: List[np.ndarray] = []
    for name in feature_names:
        v, lens, w = gather_rows(data.sparse[name], idx)
        values.append(v)
        lengths.append(lens)
        if weighted:
            weights.append(np.ones(v.shape[0], np.float32) if w is None else w)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(feature_names),
        values=torch.from_numpy(np.concatenate(values)),
        lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32)),
        weights=torch.from_numpy(np.concatenate(weights)) if weighted else None,
    )
    return Batch(
        dense_features=torch.from_numpy(data.dense[idx]),
        sparse_features=kjt,
        labels=torch.from_numpy(data.labels[idx]),
    )


class TrainLoader:
    """Shuffled training batches for one rank of a data-parallel group.

    Each epoch draws one permutation of the split from ``(seed, epoch)`` (the same on every rank and for
    every world size), cuts it into global batches of ``batch_size`` rows (the last, incomplete one is
    dropped) and gives rank r the r-th contiguous ``batch_size / world_size`` rows of each. The model
    therefore sees the same global batches in one process or in several.

    Args:
        data: the split.
        feature_names: KJT keys.
        batch_size: global batch size; must divide by ``world_size``.
        rank: this rank.
        world_size: number of data-parallel ranks.
        seed: shuffle seed.
        weighted: emit KJT weights.

    Example::

        loader = TrainLoader(train, names, batch_size=512, rank=0, world_size=1, seed=0)
        for batch in loader.epoch(0): ...
    """

    def __init__(
        self,
        data: SplitArrays,
        feature_names: Sequence[str],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        weighted: bool = False,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must divide by world size {world_size}")
        if len(data) < batch_size:
            raise ValueError(f"the split has {len(data)} rows, fewer than one batch of {batch_size}")
        self.data = data
        self.feature_names = list(feature_names)
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.weighted = weighted

    def __len__(self) -> int:
        return len(self.data) // self.batch_size

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Batches of ``epoch`` for this rank, starting at step ``start_step`` of the epoch."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
        local = self.local_batch_size
        for step in range(start_step, len(self)):
            lo = step * self.batch_size + self.rank * local
            yield make_batch(self.data, self.feature_names, perm[lo : lo + local], self.weighted)


class EvalLoader:
    """All rows of a split, once, split across ranks; every rank runs the same number of batches.

    Sharded lookups are collective, so ranks must step together: each global batch of
    ``batch_size * world_size`` rows is cut into equal per-rank parts, and the last one is padded with
    copies of row 0. Each item is ``(batch, n_valid)``: only the first ``n_valid`` rows count.

    Args:
        data: the split.
        feature_names: KJT keys.
        batch_size: rows per rank per batch.
        rank: this rank.
        world_size: number of ranks.
        weighted: emit KJT weights.
    """

    def __init__(
        self,
        data: SplitArrays,
        feature_names: Sequence[str],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        weighted: bool = False,
    ) -> None:
        self.data = data
        self.feature_names = list(feature_names)
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.weighted = weighted

    def __iter__(self) -> Iterator[Tuple[Batch, int]]:
        n = len(self.data)
        global_bs = self.batch_size * self.world_size
        for g in range(math.ceil(n / global_bs)):
            lo, hi = g * global_bs, min(n, (g + 1) * global_bs)
            part = math.ceil((hi - lo) / self.world_size)
            start = lo + self.rank * part
            idx = np.arange(start, min(hi, start + part), dtype=np.int64)
            n_valid = idx.size
            if n_valid < part:
                idx = np.concatenate([idx, np.zeros(part - n_valid, np.int64)])
            yield make_batch(self.data, self.feature_names, idx, self.weighted), n_valid
