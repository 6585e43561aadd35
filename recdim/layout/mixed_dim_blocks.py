"""The layout of a mixed-dimension provider: which id range of which feature is stored at which width.

A :class:`DimBlock` is one table of :class:`~recdim.modules.mixed_dim.MixedDimensionProvider`;
:func:`blocks_from_assignment` reads the blocks off a baseline's
:class:`~recdim.layout.dims.DimAssignment` (per-row dimensions plus MDE projections).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Sequence

import torch

if TYPE_CHECKING:
    from recdim.layout.dims import DimAssignment

ALIGN = 4  # FBGEMM's training TBE wants widths that are multiples of 4
BLOCK_SEP = "__b"


@dataclass(frozen=True)
class DimBlock:
    """Ids ``[start, stop)`` of ``feature`` stored at width ``dim``.

    Args:
        feature: the feature.
        start: first id.
        stop: one past the last id.
        dim: width d, a multiple of 4 in ``[0, K]``.
        projected: for ``0 < d < K``: lifted by a learnable ``[d, K]`` projection (MDE) when True,
            zero-padded to K (prefix dimensions) when False. Must be False for d = 0 and d = K.
    """

    feature: str
    start: int
    stop: int
    dim: int
    projected: bool = False

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def to_json(self) -> List[Any]:
        return [self.feature, self.start, self.stop, self.dim, self.projected]

    @staticmethod
    def from_json(data: Sequence[Any]) -> "DimBlock":
        f, a, b, d, p = data
        return DimBlock(str(f), int(a), int(b), int(d), bool(p))


def block_key(feature: str, j: int) -> str:
    """KJT key of the j-th block of ``feature`` (its table is ``table_name(block_key(...))``)."""
    return f"{feature}{BLOCK_SEP}{j}"


def check_blocks(blocks: Sequence[DimBlock], num_embeddings: Mapping[str, int], embedding_dim: int) -> None:
    """Raises ``ValueError`` unless the blocks tile every feature's ids in order with valid widths."""
    by_f: Dict[str, List[DimBlock]] = {f: [] for f in num_embeddings}
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


def blocks_from_assignment(assignment: "DimAssignment") -> List[DimBlock]:
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
    out: List[DimBlock] = []
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
                raise ValueError(f"{f}: rows [{p.start}, {p.stop}) of a projected block must all have dimension {p.dim}")
            cuts |= {p.start, p.stop}
        if n > 1:
            cuts |= {int(i) + 1 for i in torch.nonzero(dims[1:] != dims[:-1]).flatten().tolist()}
        starts = {p.start for p in projs}
        edges = sorted(cuts)
        for a, b in zip(edges, edges[1:]):
            out.append(DimBlock(f, a, b, int(dims[a]), a in starts))
    return out
