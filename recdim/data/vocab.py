"""Counting categorical values by 64-bit hash, and the frequency-ordered vocabularies built from them.

Values are never kept as Python strings: each is hashed to 64 bits (:func:`hash_strings`, pandas'
SipHash-based ``hash_array``) and a :class:`HashCounter` keeps three numpy arrays sorted by key
(key, count, first appearance), merged chunk by chunk in linear time. Memory: about 24 bytes per
distinct value (plus a transient copy while merging) — e.g. ~10M distinct values of a Criteo field
take ~240 MB. Two distinct values collide with probability ~ n^2 / 2^65 (about 3e-6 for n = 10M);
a collision merges them into one id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recdim.data.readers.base import TextColumn


def hash_strings(values: np.ndarray) -> np.ndarray:
    """64-bit hashes of an object array of ``str`` (the same string always gives the same key).

    Args:
        values: object array [N] of ``str``.

    Returns:
        uint64 [N].

    Example::

        hash_strings(np.array(["a", "b", "a"], dtype=object))  # keys[0] == keys[2]
    """
    if len(values) == 0:
        return np.empty(0, dtype=np.uint64)
    return pd.util.hash_array(np.asarray(values, dtype=object), categorize=True)


def string_keys(values: TextColumn) -> Tuple[np.ndarray, np.ndarray]:
    """Keys of a text column and which cells are missing (``""`` or null).

    Arrow-backed columns are dictionary-encoded first, so only the distinct strings of the column
    are hashed; the keys equal :func:`hash_strings` of the same strings.

    Args:
        values: text column [N] (pandas string Series, object array of ``str``, or Arrow strings).

    Returns:
        (uint64 keys [N], bool missing [N]); the key of a missing cell is meaningless.

    Example::

        keys, missing = string_keys(pd.Series(["a", "", "a"], dtype="str"))
    """
    if isinstance(values, np.ndarray):
        missing = np.asarray(values == "", dtype=bool)
        return hash_strings(values), missing
    if isinstance(values, pd.Series):
        values = pa.array(values if values.dtype != object else values.to_numpy(), from_pandas=True)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=bool)
    encoded = pc.dictionary_encode(values)
    words = encoded.dictionary.to_numpy(zero_copy_only=False)
    word_keys = np.append(hash_strings(words), np.uint64(0))  # the extra slot is for nulls
    word_missing = np.append(words == "", True)
    index = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return word_keys[index], word_missing[index]


class HashCounter:
    """Occurrence counts of 64-bit keys, with the position of each key's first occurrence.

    Example::

        counter = HashCounter()
        counter.add(hash_strings(chunk_values))
        vocab = counter.build(min_count=10)
    """

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.uint64)
        self.counts = np.empty(0, dtype=np.int64)
        self.first = np.empty(0, dtype=np.int64)
        self.seen = 0  # occurrences added so far: positions continue across chunks
        self.extra_oov = 0  # occurrences that go to the OOV id whatever min_count is (missing values)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, keys: np.ndarray) -> None:
        """Counts ``keys`` (uint64 [N], in stream order)."""
        uniq, first_at, counts = np.unique(keys, return_index=True, return_counts=True)
        first_at = first_at.astype(np.int64) + self.seen
        self.seen += len(keys)
        if len(uniq) == 0:
            return
        pos = np.searchsorted(self.keys, uniq)
        found = pos < len(self.keys)
        found[found] = self.keys[pos[found]] == uniq[found]
        self.counts[pos[found]] += counts[found]
        new = ~found
        self.keys = np.insert(self.keys, pos[new], uniq[new])
        self.counts = np.insert(self.counts, pos[new], counts[new])
        self.first = np.insert(self.first, pos[new], first_at[new])

    def skip(self, n: int) -> None:
        """Records ``n`` occurrences that always map to the OOV id (missing values)."""
        self.extra_oov += int(n)
        self.seen += int(n)

    def build(self, min_count: int) -> "Vocab":
        """The vocabulary: keys counted >= ``min_count`` times get ids by descending count (ties: first
        appearance); the OOV id comes last.

        Args:
            min_count: least count that earns an id of its own.

        Returns:
            A :class:`Vocab`.
        """
        kept = self.counts >= min_count
        keys, counts, first = self.keys[kept], self.counts[kept], self.first[kept]
        order = np.lexsort((first, -counts))
        ids = np.empty(len(keys), dtype=np.int64)
        ids[order] = np.arange(len(keys), dtype=np.int64)
        oov_count = int(self.counts[~kept].sum()) + self.extra_oov
        id_counts = np.append(counts[order], np.int64(oov_count)).astype(np.int64)
        return Vocab(keys=keys, ids=ids, counts=id_counts)


@dataclass(frozen=True)
class Vocab:
    """Sorted keys and their ids; every other key maps to ``oov_id = len(keys)``.

    Args:
        keys: uint64 [V], sorted.
        ids: int64 [V], the id of each key (a permutation of ``0..V-1``).
        counts: int64 [V + 1], train count per id, the OOV id last.
    """

    keys: np.ndarray
    ids: np.ndarray
    counts: np.ndarray

    @property
    def oov_id(self) -> int:
        return len(self.keys)

    @property
    def num_embeddings(self) -> int:
        return len(self.keys) + 1

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Ids of ``keys`` (uint64 [N]) -> int64 [N]; unknown keys get :attr:`oov_id`."""
        if len(self.keys) == 0:
            return np.full(len(keys), self.oov_id, dtype=np.int64)
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        found = self.keys[pos] == keys
        return np.where(found, self.ids[pos], self.oov_id).astype(np.int64)
