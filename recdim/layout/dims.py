"""Per-row prefix dimensions: what every baseline returns, its masks, parameters and bytes.

A baseline assigns every row i of every feature a dimension d_i, a multiple of 4 (FBGEMM's training
TBE) in ``[0, K]``; row i keeps columns ``[0, d_i)`` of the K-wide vector (prefix semantics, as
:func:`recdim.layout.masks.prefix_masks` per table). Budgets are compression rates as in
:mod:`recdim.layout.masks`: CR = uniform parameters (sum N * K) / kept parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from recdim.layout.masks import kept_for_cr, row_dims_to_masks  # noqa: F401  (re-exported)
from recdim.layout.segment import Segment  # noqa: F401  (re-exported)

ALIGN = 4
BYTES_PER_VALUE = 4  # float32


@dataclass(frozen=True)
class Projection:
    """A learnable ``[dim, K]`` projection that lifts rows ``[start, stop)`` of ``feature`` to width K (MDE).

    Args:
        feature: the feature.
        start: first id it serves.
        stop: one past the last id.
        dim: input width d (0 < d < K; a block at d = K needs none).
    """

    feature: str
    start: int
    stop: int
    dim: int

    def params(self, embedding_dim: int) -> int:
        return self.dim * embedding_dim


@dataclass(frozen=True, eq=False)
class DimAssignment:
    """Per-row prefix dimensions of every feature, and the projections the layout needs (MDE only).

    Args:
        dims: ``{feature: int64 [N]}``, each a multiple of 4 in ``[0, K]``.
        embedding_dim: K.
        method: the baseline that made it (``ue@8``, ``random@3``, ``mde``, ...).
        projections: learnable projections to width K (their parameters count in the budget).
        info: what the baseline chose (lambda, sampled shape, ...), JSON-ready.

    Example::

        a = uniform_dims({"user": 944, "item": 1683}, dim=8, embedding_dim=16)
        a.params, a.bytes, a.masks()["user"].shape     # 21_016, 84_064, (944, 16)
    """

    dims: Dict[str, torch.Tensor]
    embedding_dim: int
    method: str = ""
    projections: Tuple[Projection, ...] = ()
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_row_dims(self.dims, self.embedding_dim)

    @property
    def num_embeddings(self) -> Dict[str, int]:
        return {f: int(d.numel()) for f, d in self.dims.items()}

    @property
    def uniform_params(self) -> int:
        """sum N * K."""
        return sum(self.num_embeddings.values()) * self.embedding_dim

    @property
    def value_params(self) -> int:
        """Kept embedding values, sum d_i."""
        return int(sum(int(d.sum()) for d in self.dims.values()))

    @property
    def projection_params(self) -> int:
        return sum(p.params(self.embedding_dim) for p in self.projections)

    @property
    def params(self) -> int:
        """Everything the budget counts: kept values plus projections."""
        return self.value_params + self.projection_params

    @property
    def projection_bytes(self) -> int:
        return self.projection_params * BYTES_PER_VALUE

    @property
    def bytes(self) -> int:
        """float32 values plus projections (the dense floor; a tier plan adds remaps and column maps)."""
        return self.params * BYTES_PER_VALUE

    @property
    def cr(self) -> float:
        """Achieved compression rate, uniform parameters / :attr:`params`."""
        return self.uniform_params / self.params if self.params else float("inf")

    def masks(self) -> Dict[str, torch.Tensor]:
        """``{feature: bool [N, K]}`` prefix masks (see :func:`row_dims_to_masks`)."""
        return row_dims_to_masks(self.dims, self.embedding_dim)

    def summary(self) -> Dict[str, Any]:
        """JSON-ready description: per feature mean / min / max dimension, params, bytes, CR."""
        per_feature = {
            f: {
                "rows": int(d.numel()),
                "mean": float(d.float().mean()) if d.numel() else 0.0,
                "min": int(d.min()) if d.numel() else 0,
                "max": int(d.max()) if d.numel() else 0,
            }
            for f, d in self.dims.items()
        }
        return {
            "method": self.method,
            "embedding_dim": self.embedding_dim,
            "features": per_feature,
            "value_params": self.value_params,
            "projection_params": self.projection_params,
            "params": self.params,
            "bytes": self.bytes,
            "projection_bytes": self.projection_bytes,
            "cr": self.cr,
            "projections": [vars(p) for p in self.projections],
            **self.info,
        }


def check_row_dims(dims: Mapping[str, torch.Tensor], embedding_dim: int) -> None:
    """Raises ``ValueError`` unless every dimension is a multiple of 4 in ``[0, K]`` (int64 [N] tensors)."""
    for f, d in dims.items():
        if d.dim() != 1 or d.dtype != torch.int64:
            raise ValueError(f"{f}: dimensions must be an int64 [N] tensor, got {d.dtype} {tuple(d.shape)}")
        if d.numel() and (int(d.min()) < 0 or int(d.max()) > embedding_dim or bool((d % ALIGN).any())):
            raise ValueError(f"{f}: dimensions must be multiples of {ALIGN} in [0, {embedding_dim}]")


def budget_for_cr(num_embeddings: Mapping[str, int], embedding_dim: int, cr: float) -> int:
    """Parameters allowed at compression rate ``cr``: ``round(sum N * K / cr)`` (as ``kept_for_cr``)."""
    return kept_for_cr(sum(int(n) for n in num_embeddings.values()) * embedding_dim, cr)


def segment_dims_to_rows(
    segments: Sequence[Segment], dims: Sequence[int], num_embeddings: Mapping[str, int]
) -> Dict[str, torch.Tensor]:
    """Spreads one dimension per segment over its rows.

    Args:
        segments: id ranges covering every row of every feature once.
        dims: [S] one dimension per segment.
        num_embeddings: ``{feature: N}`` (sets the order of the result).

    Returns:
        ``{feature: int64 [N]}``.
    """
    out = {f: torch.full((int(n),), -1, dtype=torch.int64) for f, n in num_embeddings.items()}
    for s, d in zip(segments, dims):
        out[s.feature][s.start : s.stop] = int(d)
    for f, d in out.items():
        if d.numel() and int(d.min()) < 0:
            raise ValueError(f"{f}: segments leave rows without a dimension")
    return out


def segment_sizes(segments: Sequence[Segment]) -> np.ndarray:
    """[S] int64 rows per segment."""
    return np.asarray([s.rows for s in segments], dtype=np.int64)


def projections_for(segments: Sequence[Segment], dims: Sequence[int], embedding_dim: int) -> List[Projection]:
    """One projection per non-empty segment with ``0 < d < K`` (a segment at K is read as is)."""
    return [
        Projection(s.feature, s.start, s.stop, int(d))
        for s, d in zip(segments, dims)
        if s.rows > 0 and 0 < int(d) < embedding_dim
    ]
