"""Training batches with sampled negatives: the labelled rows plus unobserved items labelled 0."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torchrec.datasets.utils import Batch

from recdim.data.candidates import CandidateRows, concat_splits
from recdim.data.loader import TrainLoader
from recdim.data.prepared import SplitArrays

MAX_REDRAWS = 100


def sample_negatives(
    users: np.ndarray, items: np.ndarray, exclude: np.ndarray, num_items: int, rng: np.random.Generator
) -> np.ndarray:
    """One item per entry of ``users``, uniform over ``items``, redrawn while (user, item) is in ``exclude``.

    After :data:`MAX_REDRAWS` rounds the remaining collisions are kept (only a user who has nearly every
    item excluded gets there).

    Args:
        users: [N] user ids.
        items: [I] candidate item ids.
        exclude: sorted int64 keys ``user * num_items + item`` of the excluded pairs.
        num_items: the item id space (key stride).
        rng: the random source.

    Returns:
        np.ndarray: [N] int64 item ids.

    Example::

        neg = sample_negatives(np.array([0, 0]), np.arange(100), np.array([5]), 100, np.random.default_rng(0))
    """
    out = items[rng.integers(0, items.size, users.size)]
    todo = np.arange(users.size)
    for _ in range(MAX_REDRAWS):
        keys = users[todo] * num_items + out[todo]
        pos = np.searchsorted(exclude, keys).clip(max=max(0, exclude.size - 1))
        hit = exclude[pos] == keys if exclude.size else np.zeros(todo.size, bool)
        todo = todo[hit]
        if not todo.size:
            break
        out[todo] = items[rng.integers(0, items.size, todo.size)]
    return out


class NegativeSamplingLoader:
    """Shuffled training batches over the labelled rows plus ``negatives`` sampled items per positive row.

    Each epoch draws, from ``(seed, epoch)``, ``negatives`` items per positive row (label 1) uniformly among
    ``items``, avoiding the items the row's user has a positive training row with, and labels them 0. Those
    rows join the training split, and the epoch is cut into batches as :class:`TrainLoader` does (same
    global batches on any number of ranks; a resumed epoch draws the same negatives). The number of rows,
    and so of steps, is the same every epoch.

    Args:
        train: the training split (binary labels).
        candidates: builds the input of a sampled (user, item) pair.
        items: [I] candidate item ids to draw from.
        feature_names: KJT keys.
        negatives: items drawn per positive row (0: the labelled rows alone).
        batch_size: global batch size.
        rank: this rank.
        world_size: number of data-parallel ranks.
        seed: sampling and shuffle seed.
        weighted: emit KJT weights.

    Example::

        loader = NegativeSamplingLoader(train, cands, items, names, negatives=4, batch_size=512)
        for batch in loader.epoch(0): ...
    """

    def __init__(
        self,
        train: SplitArrays,
        candidates: CandidateRows,
        items: np.ndarray,
        feature_names: Sequence[str],
        negatives: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        weighted: bool = False,
    ) -> None:
        self.train = train
        self.candidates = candidates
        self.items = np.asarray(items, np.int64)
        self.feature_names = list(feature_names)
        self.negatives = int(negatives)
        self.batch_size = batch_size
        self.rank, self.world_size, self.seed, self.weighted = rank, world_size, seed, weighted
        users = train.sparse[candidates.user_field].values
        item_ids = train.sparse[candidates.item_field].values
        positive = train.labels > 0.5
        self.num_items = int(max(item_ids.max(initial=0), self.items.max(initial=0))) + 1
        self.pos_users = users[positive]
        self.exclude = np.unique(self.pos_users * self.num_items + item_ids[positive])
        if self.negatives and not self.items.size:
            raise ValueError("no candidate items to draw negatives from")
        rows = len(train) + self.negatives * self.pos_users.size
        if rows < batch_size:
            raise ValueError(f"an epoch has {rows} rows, fewer than one batch of {batch_size}")
        self._rows = rows

    def __len__(self) -> int:
        return self._rows // self.batch_size

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def epoch_rows(self, epoch: int) -> SplitArrays:
        """The rows of ``epoch`` before shuffling: the training split, then the sampled negatives."""
        if not self.negatives:
            return self.train
        rng = np.random.default_rng([self.seed, epoch, 1])
        users = np.repeat(self.pos_users, self.negatives)
        items = sample_negatives(users, self.items, self.exclude, self.num_items, rng)
        return concat_splits([self.train, self.candidates.rows(users, items)])

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Batches of ``epoch`` for this rank, starting at step ``start_step`` of the epoch."""
        loader = TrainLoader(
            self.epoch_rows(epoch),
            self.feature_names,
            self.batch_size,
            self.rank,
            self.world_size,
            self.seed,
            self.weighted,
        )
        return loader.epoch(epoch, start_step)
