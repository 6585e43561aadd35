"""PEP threshold granularities: where the thresholds s live and how they pair with looked-up values.

A :class:`Thresholds` module splits what a table lookup returns into the values V and their thresholds s,
for the two layouts :class:`~recdim.modules.threshold.ThresholdEmbeddingProvider` produces:

- per-id rows of an EmbeddingCollection, feature after feature (:meth:`Thresholds.split`, [n, c * K]);
- one pooled row per (sample, feature) of an EmbeddingBagCollection (:meth:`Thresholds.split_grouped`,
  [B, G, c * K]), used for single-valued features, whose pooled row is the row of their one id;

and, for bookkeeping over (possibly sharded) tables, local table shards (:meth:`Thresholds.split_piece`).

- :class:`GlobalThreshold` (one s), :class:`DimensionThreshold` (s in R^K), :class:`FeatureThreshold`
  (one s per sparse feature) are dense parameters (data-parallel, trained by the dense optimizer).
- :class:`FeatureDimensionThreshold` (s in R^{N x K}) is stored in the table beside the values,
  ``[V0, s0, V1, s1, ...]`` ([N, 2K]), and trained by the table's fused optimizer.

The soft threshold itself, and its fused forms, are in :mod:`recdim.modules.soft_threshold`.
"""

from __future__ import annotations

import abc
from typing import Dict, Sequence, Tuple

import torch
from torch import nn

ColumnRange = Tuple[int, int]


class Thresholds(nn.Module, abc.ABC):
    """Where the thresholds s live and how they pair with table values (the PEP granularity).

    ``columns_per_value`` is how many table columns each of the K embedding values takes: 1 when s is a
    dense parameter, 2 when s is stored beside each value in the table. ``features`` arguments are indices
    into the provider's feature list (int64 tensors), so per-feature thresholds follow any grouping.
    """

    columns_per_value: int = 1

    @abc.abstractmethod
    def split(
        self, rows: torch.Tensor, counts: Sequence[int], features: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Values and thresholds of per-id rows.

        Args:
            rows: [n, columns_per_value * K] rows of the features ``features``, feature after feature.
            counts: rows of each of those features (sum n).
            features: [G] feature indices.

        Returns:
            (V [n, K], s broadcastable to [n, K]).
        """

    @abc.abstractmethod
    def split_grouped(self, rows: torch.Tensor, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Values and thresholds of one row per (sample, feature).

        Args:
            rows: [B, G, columns_per_value * K], column g from feature ``features[g]``.
            features: [G] feature indices.

        Returns:
            (V [B, G, K], s broadcastable to [B, G, K]).
        """

    @abc.abstractmethod
    def split_piece(
        self, feature: int, piece: torch.Tensor, cols: ColumnRange
    ) -> Tuple[torch.Tensor, torch.Tensor, ColumnRange]:
        """Values and thresholds of a local table shard covering table columns ``cols``.

        Returns:
            (V [r, k], s broadcastable to [r, k], the embedding columns [k0, k1) that V covers).
        """

    def init_piece(self, piece: torch.Tensor, cols: ColumnRange) -> None:
        """Writes the initial thresholds into a local table shard (nothing when s is not in the table)."""

    def dense_state(self) -> Dict[str, torch.Tensor]:
        """The thresholds held as dense parameters, by name (empty when s lives in the table)."""
        return {name: p.detach() for name, p in self.named_parameters()}


class GlobalThreshold(Thresholds):
    """One threshold shared by every value of every table.

    Args:
        init: initial s.
    """

    def __init__(self, init: float) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.full((1,), float(init)))

    def split(
        self, rows: torch.Tensor, counts: Sequence[int], features: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return rows, self.s

    def split_grouped(self, rows: torch.Tensor, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return rows, self.s

    def split_piece(
        self, feature: int, piece: torch.Tensor, cols: ColumnRange
    ) -> Tuple[torch.Tensor, torch.Tensor, ColumnRange]:
        return piece, self.s, cols


class DimensionThreshold(Thresholds):
    """One threshold per embedding dimension, shared by all features: s in R^K.

    Args:
        embedding_dim: K.
        init: initial s.
    """

    def __init__(self, embedding_dim: int, init: float) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.full((embedding_dim,), float(init)))

    def split(
        self, rows: torch.Tensor, counts: Sequence[int], features: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return rows, self.s

    def split_grouped(self, rows: torch.Tensor, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return rows, self.s

    def split_piece(
        self, feature: int, piece: torch.Tensor, cols: ColumnRange
    ) -> Tuple[torch.Tensor, torch.Tensor, ColumnRange]:
        return piece, self.s[cols[0] : cols[1]], cols


class FeatureThreshold(Thresholds):
    """One threshold per sparse feature (field), shared by its rows and dimensions: s in R^F.

    Args:
        num_features: F.
        init: initial s.
    """

    def __init__(self, num_features: int, init: float) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.full((num_features,), float(init)))

    def split(
        self, rows: torch.Tensor, counts: Sequence[int], features: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        repeats = torch.tensor(counts, device=self.s.device)
        per_row = torch.repeat_interleave(self.s[features.to(self.s.device)], repeats, output_size=rows.size(0))
        return rows, per_row.unsqueeze(1)

    def split_grouped(self, rows: torch.Tensor, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return rows, self.s[features.to(self.s.device)].unsqueeze(1)  # [G, 1]

    def split_piece(
        self, feature: int, piece: torch.Tensor, cols: ColumnRange
    ) -> Tuple[torch.Tensor, torch.Tensor, ColumnRange]:
        return piece, self.s[feature], cols


class FeatureDimensionThreshold(Thresholds):
    """One threshold per table value, s in R^{N x K}, stored interleaved with the values in the table.

    Table row i is ``[V_i0, s_i0, V_i1, s_i1, ...]`` ([2K] wide), so lookups, sharding and the fused
    optimizer treat s exactly like the values. ``init`` is written by :meth:`init_piece` after the tables
    are initialised (``recdim.search.pep.init_threshold_tables``).

    Args:
        init: initial s.
    """

    columns_per_value = 2

    def __init__(self, init: float) -> None:
        super().__init__()
        self.init = float(init)

    def split(
        self, rows: torch.Tensor, counts: Sequence[int], features: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        pairs = rows.reshape(rows.size(0), -1, 2)
        return pairs[..., 0], pairs[..., 1]

    def split_grouped(self, rows: torch.Tensor, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pairs = rows.reshape(rows.size(0), rows.size(1), -1, 2)
        return pairs[..., 0], pairs[..., 1]

    def split_piece(
        self, feature: int, piece: torch.Tensor, cols: ColumnRange
    ) -> Tuple[torch.Tensor, torch.Tensor, ColumnRange]:
        if cols[0] % 2 or cols[1] % 2:
            raise ValueError(f"a shard splits a (value, threshold) pair: columns {cols}")
        return piece[:, 0::2], piece[:, 1::2], (cols[0] // 2, cols[1] // 2)

    def init_piece(self, piece: torch.Tensor, cols: ColumnRange) -> None:
        if cols[0] % 2 or cols[1] % 2:
            raise ValueError(f"a shard splits a (value, threshold) pair: columns {cols}")
        piece[:, 1::2] = self.init


def make_thresholds(granularity: str, feature_names: Sequence[str], embedding_dim: int, init: float) -> Thresholds:
    """The :class:`Thresholds` for a granularity name (``global``, ``dimension``, ``feature``,
    ``feature_dimension``).

    Example::

        thresholds = make_thresholds("dimension", ["user", "item"], 16, init=-8.0)
    """
    if granularity == "global":
        return GlobalThreshold(init)
    if granularity == "dimension":
        return DimensionThreshold(embedding_dim, init)
    if granularity == "feature":
        return FeatureThreshold(len(feature_names), init)
    if granularity == "feature_dimension":
        return FeatureDimensionThreshold(init)
    raise ValueError(f"unknown PEP granularity {granularity!r}")
