"""Model input rows for any (user, item) pair, built from per-user and per-item feature tables.

Full ranking scores pairs that no split holds, so each scored row must be assembled: the user's fields
from the user's own rows, the item's fields from the item's rows. Which side a field belongs to is read
from the data: a field is a user field when every row of a user carries the same value (bag, weights),
an item field when every row of an item does. A field that is neither (a context field such as the hour
of a click) cannot be filled in for an unseen pair and is an error.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from recdim.data.loader import gather_rows
from recdim.data.prepared import SparseColumn, SplitArrays

_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def concat_columns(cols: Sequence[SparseColumn]) -> SparseColumn:
    """The rows of ``cols`` one after another, as one CSR column (weights kept when every part has them)."""
    values = np.concatenate([c.values for c in cols]).astype(np.int64, copy=False)
    lengths = np.concatenate([c.lengths for c in cols])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    weighted = [c.weights is not None for c in cols]
    if any(weighted) and not all(weighted):
        raise ValueError("cannot concatenate weighted and unweighted columns")
    weights = np.concatenate([c.weights for c in cols]) if all(weighted) and cols else None
    return SparseColumn(values, offsets, weights)


def concat_splits(parts: Sequence[SplitArrays]) -> SplitArrays:
    """The rows of ``parts`` one after another (same sparse features and dense width in each).

    Example::

        both = concat_splits([train, extra_rows])
        len(both) == len(train) + len(extra_rows)
    """
    names = list(parts[0].sparse)
    for p in parts[1:]:
        if list(p.sparse) != names or p.dense.shape[1] != parts[0].dense.shape[1]:
            raise ValueError("cannot concatenate splits with different features")
    return SplitArrays(
        labels=np.concatenate([p.labels for p in parts]).astype(np.float32, copy=False),
        dense=np.concatenate([p.dense for p in parts]).astype(np.float32, copy=False),
        sparse={n: concat_columns([p.sparse[n] for p in parts]) for n in names},
    )


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX[1]
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX[2]
    return x ^ (x >> np.uint64(31))


def row_keys(col: SparseColumn) -> np.ndarray:
    """A 64-bit key per row of ``col``: equal bags (same ids in the same order, same weights) get equal
    keys; different bags collide with probability about 2^-64.

    Args:
        col: N rows.

    Returns:
        np.ndarray: [N] uint64.
    """
    with np.errstate(over="ignore"):
        lengths = col.lengths
        pos = np.arange(col.values.size, dtype=np.int64) - np.repeat(col.offsets[:-1], lengths)
        h = _mix(col.values.astype(np.uint64) * _MIX[0] + pos.astype(np.uint64))
        if col.weights is not None:
            h = _mix(h ^ col.weights.astype(np.float32).view(np.uint32).astype(np.uint64))
        cum = np.concatenate([[np.uint64(0)], np.cumsum(h, dtype=np.uint64)])
        return _mix((cum[col.offsets[1:]] - cum[col.offsets[:-1]]) ^ _mix(lengths.astype(np.uint64)))


def determined_by(entity: np.ndarray, keys: np.ndarray) -> bool:
    """Whether ``keys`` is a function of ``entity``: no entity has two different keys.

    Args:
        entity: [N] int64 ids.
        keys: [N] row keys (:func:`row_keys`).
    """
    order = np.lexsort((keys, entity))
    e, k = entity[order], keys[order]
    return not bool(np.any((e[1:] == e[:-1]) & (k[1:] != k[:-1])))


class CandidateRows:
    """Per-user and per-item feature tables that assemble the model input of any (user, item) pair.

    Every feature is assigned to the user side or the item side by :func:`determined_by` over the rows of
    ``sources`` (the user and item fields themselves are fixed; a field determined by both, e.g. a
    constant, goes to the user side). Each side keeps one representative row per id, the first in
    ``sources`` order. Rows whose id is the side's OOV id (many rare or unseen users / items sharing one
    id, with different attributes) take no part in that side's check or table.

    Args:
        sources: splits whose rows define the tables (train, val and test: only features, never labels).
        feature_names: the model's sparse features, in order; must include ``user_field`` and ``item_field``.
        user_field: the feature holding the user id.
        item_field: the feature holding the item id.
        user_oov: the user field's OOV id (-1: none).
        item_oov: the item field's OOV id (-1: none).

    Raises:
        ValueError: dense features are present, a feature is multi-valued in the id fields, or a feature
            is neither a user nor an item attribute.

    Example::

        cands = CandidateRows([train, val, test], ["user_id", "item_id", "age", "genres"], "user_id", "item_id")
        cands.item_fields               # ["item_id", "genres"]
        rows = cands.rows(np.array([3, 3]), np.array([10, 11]))  # SplitArrays of 2 rows, labels 0
    """

    def __init__(
        self,
        sources: Sequence[SplitArrays],
        feature_names: Sequence[str],
        user_field: str,
        item_field: str,
        user_oov: int = -1,
        item_oov: int = -1,
    ) -> None:
        self.feature_names = list(feature_names)
        for f in (user_field, item_field):
            if f not in self.feature_names:
                raise ValueError(f"top-k ranking needs feature {f!r} among the model's features {self.feature_names}")
        if any(s.dense.shape[1] for s in sources):
            raise ValueError("top-k ranking does not support dense features yet (each would need a side)")
        data = concat_splits(sources)
        ids, valid = {}, {}
        for f, oov in ((user_field, user_oov), (item_field, item_oov)):
            col = data.sparse[f]
            if col.values.size != len(data) or np.any(col.lengths != 1):
                raise ValueError(f"top-k ranking needs exactly one id per row in {f!r}")
            ids[f], valid[f] = col.values, np.flatnonzero(col.values != oov)
        self.user_field, self.item_field = user_field, item_field
        self.user_fields: List[str] = [user_field]
        self.item_fields: List[str] = [item_field]
        for f in self.feature_names:
            if f in (user_field, item_field):
                continue
            keys = row_keys(data.sparse[f])
            if determined_by(ids[user_field][valid[user_field]], keys[valid[user_field]]):
                self.user_fields.append(f)
            elif determined_by(ids[item_field][valid[item_field]], keys[valid[item_field]]):
                self.item_fields.append(f)
            else:
                raise ValueError(
                    f"feature {f!r} is neither a user attribute (same value on every row of a user) nor an item "
                    f"attribute, so full ranking cannot fill it in for unseen pairs; leave it out of data.features"
                )
        self._slot: Dict[str, np.ndarray] = {}
        self._tables: Dict[str, SparseColumn] = {}
        for side, fields in ((user_field, self.user_fields), (item_field, self.item_fields)):
            entity = ids[side][valid[side]]
            uniq, first = np.unique(entity, return_index=True)
            first = valid[side][first]
            slot = np.full(int(entity.max()) + 1 if entity.size else 0, -1, np.int64)
            slot[uniq] = np.arange(uniq.size)
            self._slot[side] = slot
            for f in fields:
                values, lengths, weights = gather_rows(data.sparse[f], first)
                offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
                self._tables[f] = SparseColumn(values, offsets, weights)

    def known(self, side: str, ids: np.ndarray) -> np.ndarray:
        """[N] bool: which ``ids`` of ``side`` (``user_field`` or ``item_field``) have a table row."""
        slot = self._slot[side]
        ids = np.asarray(ids, np.int64)
        inside = (ids >= 0) & (ids < slot.size)
        out = np.zeros(ids.shape, bool)
        out[inside] = slot[ids[inside]] >= 0
        return out

    def rows(self, users: np.ndarray, items: np.ndarray) -> SplitArrays:
        """The model input of the pairs ``(users[j], items[j])``, labels 0.

        Args:
            users: [N] user ids, each with a table row.
            items: [N] item ids, each with a table row.

        Returns:
            SplitArrays: N rows over ``feature_names`` (no dense features).
        """
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        if users.shape != items.shape:
            raise ValueError(f"users and items differ in length: {users.size} vs {items.size}")
        at = {}
        for side, ids in ((self.user_field, users), (self.item_field, items)):
            if not self.known(side, ids).all():
                raise ValueError(f"{side}: ids without a row in the feature tables")
            at[side] = self._slot[side][ids]
        sparse: Dict[str, SparseColumn] = {}
        for f in self.feature_names:
            idx = at[self.user_field] if f in self.user_fields else at[self.item_field]
            values, lengths, weights = gather_rows(self._tables[f], idx)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            sparse[f] = SparseColumn(values.astype(np.int64, copy=False), offsets, weights)
        n = users.size
        return SplitArrays(labels=np.zeros(n, np.float32), dense=np.zeros((n, 0), np.float32), sparse=sparse)
