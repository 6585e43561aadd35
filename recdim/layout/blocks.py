"""Feature blocking: ids cut by train frequency into L blocks that share one row of soft-selection weights.

Sparse ids are ordered by descending train frequency within each field (``docs/data-format.md``), so
every (table, block) is a contiguous id range and a block map is just L + 1 boundaries per table:
``block(id) = b`` with ``bounds[b] <= id < bounds[b + 1]``. No per-id array is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Mapping, Sequence, Tuple

import numpy as np
import torch

Blocking = Literal["global", "per_table"]


@dataclass(frozen=True)
class BlockPlan:
    """Which frequency block every id of every feature falls in.

    Args:
        features: feature names, in provider order (F of them).
        boundaries: per feature, L + 1 non-decreasing ints from 0 to the feature's row count; block b
            holds ids ``[boundaries[f][b], boundaries[f][b + 1])`` (empty when they are equal).
        scheme: ``global`` (all features cut together: alpha has L rows shared by all features) or
            ``per_table`` (each feature cut on its own: alpha has F * L rows, feature f's block b at row
            ``f * L + b``).

    Example::

        plan = per_table_blocks({"user": 944, "item": 1683}, num_blocks=4)
        plan.block_of("item", torch.tensor([0, 500, 1682]))   # tensor([0, 1, 3])
    """

    features: Tuple[str, ...]
    boundaries: Tuple[Tuple[int, ...], ...]
    scheme: Blocking

    def __post_init__(self) -> None:
        if len(self.features) != len(self.boundaries) or not self.features:
            raise ValueError("a block plan needs one boundary list per feature, and at least one feature")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"duplicate features in block plan: {self.features}")
        sizes = {len(b) for b in self.boundaries}
        if len(sizes) != 1 or sizes.pop() < 2:
            raise ValueError("every feature needs the same number (L + 1 >= 2) of block boundaries")
        for f, b in zip(self.features, self.boundaries):
            if b[0] != 0 or any(x > y for x, y in zip(b, b[1:])):
                raise ValueError(f"block boundaries of {f!r} must start at 0 and not decrease: {b}")
        if self.scheme not in ("global", "per_table"):
            raise ValueError(f"unknown blocking scheme {self.scheme!r}")

    @property
    def num_blocks(self) -> int:
        """L."""
        return len(self.boundaries[0]) - 1

    @property
    def num_alpha_rows(self) -> int:
        """Rows of the soft-selection weights: L (global) or F * L (per table)."""
        return self.num_blocks * (len(self.features) if self.scheme == "per_table" else 1)

    def index(self, feature: str) -> int:
        return self.features.index(feature)

    def num_embeddings(self, feature: str) -> int:
        return self.boundaries[self.index(feature)][-1]

    def block_sizes(self, feature: str) -> List[int]:
        """Ids per block of ``feature`` ([L] ints)."""
        b = self.boundaries[self.index(feature)]
        return [hi - lo for lo, hi in zip(b, b[1:])]

    def alpha_row_offset(self, feature: str) -> int:
        """Alpha row of ``feature``'s block 0 (0 for global blocking, ``f * L`` per table)."""
        return self.index(feature) * self.num_blocks if self.scheme == "per_table" else 0

    def block_of(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """Block of each id.

        Args:
            feature: the feature.
            ids: int tensor of any shape, ids of ``feature``.

        Returns:
            Tensor: int64, same shape, values in ``[0, L)`` (ids past the table land in the last block).
        """
        bounds = torch.tensor(self.boundaries[self.index(feature)][1:-1], dtype=torch.int64, device=ids.device)
        return torch.searchsorted(bounds, ids.to(torch.int64), right=True)

    def to_json(self) -> Dict[str, Any]:
        return {
            "scheme": self.scheme,
            "num_blocks": self.num_blocks,
            "boundaries": {f: list(b) for f, b in zip(self.features, self.boundaries)},
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> "BlockPlan":
        bounds = data["boundaries"]
        return BlockPlan(tuple(bounds), tuple(tuple(int(x) for x in bounds[f]) for f in bounds), data["scheme"])

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)


def per_table_blocks(num_embeddings: Mapping[str, int], num_blocks: int) -> BlockPlan:
    """Cuts every table on its own into L blocks of (almost) equal id count.

    Ids are frequency-sorted, so the blocks are ``[b * n // L, (b + 1) * n // L)``; with L > n some
    blocks are empty.

    Args:
        num_embeddings: rows per feature, in provider order.
        num_blocks: L.

    Returns:
        BlockPlan: ``scheme = "per_table"``.
    """
    _check_blocks(num_blocks)
    bounds = tuple(tuple((b * int(n)) // num_blocks for b in range(num_blocks + 1)) for n in num_embeddings.values())
    return BlockPlan(tuple(num_embeddings), bounds, "per_table")


def global_blocks(counts: Mapping[str, np.ndarray], num_blocks: int) -> BlockPlan:
    """Cuts all features' ids together, by descending train count, into L blocks of equal id count.

    All N = sum_f n_f (feature, id) pairs are ranked by count (highest first); ties go to the earlier
    feature (in ``counts`` order), then to the smaller id. Pair at rank p falls in block
    ``b`` with ``b * N // L <= p < (b + 1) * N // L``. The id order is the frequency order within a field,
    so a count that rises against it (the OOV id, last, collects every rare value) is capped at the
    running minimum of the counts before it: the blocks stay contiguous id ranges. Runs in
    O(L * F * log n * log max_count) without sorting the N pairs.

    Args:
        counts: per feature, the [n_f] train counts of its ids (``PreparedDataset.counts``), in provider
            order.
        num_blocks: L.

    Returns:
        BlockPlan: ``scheme = "global"``.

    Example::

        plan = global_blocks({f: ds.counts(f) for f in features}, num_blocks=10)
    """
    _check_blocks(num_blocks)
    desc = [
        np.minimum.accumulate(np.asarray(c, dtype=np.int64)) if len(c) else np.zeros(0, np.int64)
        for c in counts.values()
    ]
    if any(len(c) and c[-1] < 0 for c in desc):
        raise ValueError("train counts must be non-negative")
    neg = [-c for c in desc]  # ascending
    total = sum(len(c) for c in desc)
    cuts = [(b * total) // num_blocks for b in range(num_blocks + 1)]
    takes = [_prefix_take(neg, p, total) for p in cuts]
    bounds = tuple(tuple(t[f] for t in takes) for f in range(len(desc)))
    return BlockPlan(tuple(counts), bounds, "global")


def make_block_plan(blocking: Blocking, counts: Mapping[str, np.ndarray], num_blocks: int) -> BlockPlan:
    """:func:`global_blocks` or :func:`per_table_blocks` (which needs only the row counts ``len(c)``)."""
    if blocking == "global":
        return global_blocks(counts, num_blocks)
    if blocking == "per_table":
        return per_table_blocks({f: len(c) for f, c in counts.items()}, num_blocks)
    raise ValueError(f"unknown blocking {blocking!r}")


def _check_blocks(num_blocks: int) -> None:
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")


def _greater(neg: Sequence[np.ndarray], v: int) -> List[int]:
    """Per feature, how many ids have count > v (``neg`` holds the negated, ascending counts)."""
    return [int(np.searchsorted(a, -v, side="left")) for a in neg]


def _prefix_take(neg: Sequence[np.ndarray], p: int, total: int) -> List[int]:
    """Per feature, how many of its ids are among the first ``p`` pairs of the global ranking."""
    if p <= 0:
        return [0] * len(neg)
    if p >= total:
        return [len(a) for a in neg]
    # Smallest count v with #(count > v) <= p; then the ranking's first p pairs are all pairs with
    # count > v plus the first p - #(count > v) pairs with count == v in (feature, id) order.
    lo, hi = -1, max(int(-a[0]) for a in neg if len(a))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sum(_greater(neg, mid)) <= p:
            hi = mid
        else:
            lo = mid
    gt = _greater(neg, hi)
    ge = _greater(neg, hi - 1)
    rest = p - sum(gt)
    out = []
    for g, e in zip(gt, ge):
        take = min(e - g, rest)
        out.append(g + take)
        rest -= take
    return out
