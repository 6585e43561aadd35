"""The layout of a mixed-dimension provider: which id range of which feature is stored at which width.

A :class:`~recdim.layout.segment.Segment` (with its width) is one table of
:class:`~recdim.modules.mixed_dim.MixedDimensionProvider`; :func:`blocks_from_assignment` reads the
blocks off a baseline's :class:`~recdim.layout.dims.DimAssignment` (per-row dimensions plus MDE
projections). :class:`BlockRouting` is the provider's lookup layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Mapping, Sequence

import torch

from recdim.layout.segment import Segment

if TYPE_CHECKING:
    from recdim.layout.dims import DimAssignment

ALIGN = 4  # FBGEMM's training TBE wants widths that are multiples of 4
BLOCK_SEP = "__b"


def block_key(feature: str, j: int) -> str:
    """KJT key of the j-th block of ``feature`` (its table is ``table_name(block_key(...))``)."""
    return f"{feature}{BLOCK_SEP}{j}"


def check_blocks(blocks: Sequence[Segment], num_embeddings: Mapping[str, int], embedding_dim: int) -> None:
    """Raises ``ValueError`` unless the blocks tile every feature's ids in order with valid widths."""
    by_f: Dict[str, List[Segment]] = {f: [] for f in num_embeddings}
    for b in blocks:
        if b.feature not in by_f:
            raise ValueError(f"block of unknown feature {b.feature!r}")
        if b.dim < 0 or b.dim > embedding_dim or b.dim % ALIGN:
            raise ValueError(f"{b}: width must be a multiple of {ALIGN} in [0, {embedding_dim}]")
        if b.projected and not 0 < b.dim < embedding_dim:
            raise ValueError(f"{b}: only a width in (0, K) can have a projection")
        by_f[b.feature].append(b)
    for f, n in num_embeddings.items():
        pos = 0
        for b in by_f[f]:
            if b.start != pos or b.stop < b.start:
                raise ValueError(f"{f}: blocks must tile [0, {n}) in order; {b} follows id {pos}")
            pos = b.stop
        if pos != int(n):
            raise ValueError(f"{f}: blocks cover [0, {pos}), the table has {n} rows")


def blocks_from_assignment(assignment: "DimAssignment") -> List[Segment]:
    """The blocks a :class:`~recdim.layout.dims.DimAssignment` stands for.

    Every projection ``(feature, start, stop, dim)`` is one projected block; its rows must all have
    dimension ``dim`` (per-row dimensions inside an MDE block are constant by construction). Rows
    outside projections form one block per run of equal dimension, zero-padded when below K (prefix
    dimensions, as the tier tables store them), so any baseline's assignment has a layout.

    Args:
        assignment: per-row dimensions and projections.

    Returns:
        Blocks tiling every feature's ids in order (one per projection and per run).

    Raises:
        ValueError: a projection that overlaps another, leaves the table, or covers rows whose
            dimension differs from its own.

    Example::

        a = baseline_dims("mde", cfg.search.baseline, counts, 16, 4.0)
        blocks = blocks_from_assignment(a)    # one block per non-empty (feature, frequency block)
    """
    K = assignment.embedding_dim
    out: List[Segment] = []
    for f, dims in assignment.dims.items():
        n = int(dims.numel())
        projs = sorted((p for p in assignment.projections if p.feature == f), key=lambda p: p.start)
        cuts = {0, n}
        for a, b in zip(projs, projs[1:]):
            if b.start < a.stop:
                raise ValueError(f"{f}: projections [{a.start}, {a.stop}) and [{b.start}, {b.stop}) overlap")
        for p in projs:
            if not 0 <= p.start < p.stop <= n or not 0 < p.dim < K:
                raise ValueError(f"{f}: projection {p} outside [0, {n}) or its width outside (0, {K})")
            if bool((dims[p.start : p.stop] != p.dim).any()):
                raise ValueError(
                    f"{f}: rows [{p.start}, {p.stop}) of a projected block must all have dimension {p.dim}"
                )
            cuts |= {p.start, p.stop}
        if n > 1:
            cuts |= {int(i) + 1 for i in torch.nonzero(dims[1:] != dims[:-1]).flatten().tolist()}
        starts = {p.start for p in projs}
        edges = sorted(cuts)
        for a, b in zip(edges, edges[1:]):
            out.append(Segment(f, a, b, int(dims[a]), a in starts))
    return out


@dataclass
class BlockRouting:
    """The lookup layout of a mixed-dimension provider: its non-empty blocks, their KJT keys and slots,
    which projection each stored block uses, and the rows of the lift matrix each slot reads.

    Slots are the stored blocks (``dim > 0``) in (feature, id) order, one EBC key each. Projections of
    width d are stacked per width (ascending); the lift matrix is ``[every projection's rows; I_K]``.

    Args:
        blocks: non-empty blocks in (feature, id) order.
        keys: per block, its KJT key (``<feature>__b<j>``).
        stored: indices of the blocks with a table.
        widths: projection widths, ascending.
        projected_slots: ``{width: slots}`` of the projected blocks of that width, in order.
        lift_rows: per slot, the rows of the lift matrix it reads.
        slot_feature: per slot, its feature index.
        feature_offsets: per feature, its first global id.
        block_starts: per block, its first global id.
        slot_of_block: per block, its slot or -1 (a dropped block).
    """

    blocks: List[Segment]
    keys: List[str]
    stored: List[int]
    widths: List[int]
    projected_slots: Dict[int, List[int]]
    lift_rows: List[List[int]]
    slot_feature: List[int]
    feature_offsets: List[int]
    block_starts: List[int]
    slot_of_block: List[int]

    @property
    def slot_keys(self) -> List[str]:
        return [self.keys[i] for i in self.stored]

    @property
    def drops(self) -> bool:
        """Some non-empty block has no table (its ids look up zeros)."""
        return len(self.stored) < len(self.blocks)

    @staticmethod
    def build(blocks: Sequence[Segment], num_embeddings: Mapping[str, int]) -> "BlockRouting":
        """The routing of ``blocks`` (already checked by :func:`check_blocks`) over ``num_embeddings``.

        Example::

            r = BlockRouting.build([Segment("user", 0, 944, 8, projected=True)], {"user": 944})
            r.slot_keys    # ["user__b0"]
        """
        features = list(num_embeddings)
        nonempty = [b for f in features for b in blocks if b.feature == f and b.rows > 0]
        keys: List[str] = []
        seen: Dict[str, int] = {}
        for b in nonempty:
            keys.append(block_key(b.feature, seen.get(b.feature, 0)))
            seen[b.feature] = seen.get(b.feature, 0) + 1
        stored = [i for i, b in enumerate(nonempty) if b.dim > 0]
        widths = sorted({nonempty[i].dim for i in stored if nonempty[i].projected})
        projected = {
            d: [s for s, i in enumerate(stored) if nonempty[i].dim == d and nonempty[i].projected] for d in widths
        }
        lift_rows: List[List[int]] = [[] for _ in stored]
        base = 0
        for d in widths:
            for k, slot in enumerate(projected[d]):
                lift_rows[slot] = list(range(base + k * d, base + (k + 1) * d))
            base += len(projected[d]) * d
        for slot, i in enumerate(stored):
            if not nonempty[i].projected:
                lift_rows[slot] = list(range(base, base + nonempty[i].dim))
        fidx = {f: i for i, f in enumerate(features)}
        offsets = [0]
        for f in features:
            offsets.append(offsets[-1] + int(num_embeddings[f]))
        slot_of_block = [-1] * len(nonempty)
        for s, i in enumerate(stored):
            slot_of_block[i] = s
        return BlockRouting(
            nonempty,
            keys,
            stored,
            widths,
            projected,
            lift_rows,
            [fidx[nonempty[i].feature] for i in stored],
            offsets[:-1],
            [offsets[fidx[b.feature]] + b.start for b in nonempty],
            slot_of_block,
        )
