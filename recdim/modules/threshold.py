"""PEP learnable soft thresholds: every looked-up row is pruned value by value before pooling.

PEP (Liu et al., ICLR 2021) replaces each embedding value V by

    S(V, s) = sign(V) * relu(|V| - g(s)),   g = sigmoid by default,

and trains the thresholds s jointly with V on the training loss. A value whose magnitude falls under its
threshold reads as 0 and gets no gradient (the sub-gradient of the paper's eq. 11:
dS/dV = 1[|V| > g(s)], dS/dg = -sign(V) 1[|V| > g(s)]), so the surviving non-zeros form the mask that
``recdim.search.pep`` snapshots at each memory budget.

Per id, before pooling: the threshold acts on rows, so bags are pooled here, not by a pooled kernel.
The tables sit in an :class:`EmbeddingCollection` (unpooled, per-id rows, sharded by DMP and trained by
the fused optimizer in backward); the provider thresholds the rows of all features in one pass and sums
(or averages) the rows of each bag over the jagged lengths (one scatter for all features; a batch of
single-valued features skips it).

Where s lives (its granularity) is a :class:`Thresholds` module, chosen by composition:

- :class:`GlobalThreshold` (one s), :class:`DimensionThreshold` (s in R^K), :class:`FeatureThreshold`
  (one s per sparse feature, i.e. per field) are ordinary dense parameters: data-parallel, trained by the
  dense optimizer (Adam, ``train.lr``, ``train.weight_decay``) on the training loss. They are not
  architecture parameters.
- :class:`FeatureDimensionThreshold` (s in R^{N x K}) is as large as the table, so it is stored *in* the
  table: each row holds K (value, threshold) pairs interleaved, [N, 2K]. One lookup returns both, the
  planner shards them together (any row or column split keeps pairs whole, shard widths being multiples
  of 4), and s is trained by the table's fused optimizer (``train.embedding_optimizer`` with
  ``train.embedding_lr``; with ``rowwise_adagrad`` the values and thresholds of a row share one step size).

Threshold dynamics (why the defaults differ from the paper). The paper initialises s = -150. In float32
sigmoid(-150) and its derivative are exactly 0, so no loss gradient ever reaches s; the published code
prunes only because Adam's *coupled* weight decay adds ``wd * s`` to the gradient and Adam, normalising
it, drags s up by about the learning rate per step until sigmoid(s) becomes representable. We make that
pressure explicit instead of accidental: s starts where g(s) is negligible but g'(s) is not (default -8:
g = 3.4e-4, g' = 3.4e-4), and a pressure pushes s up while the loss, which now reaches s, pushes back
where pruning hurts. ``recdim.search.pep`` offers a linear ramp (default: from the initial s to 0, i.e.
g = 0.5, over the planned run) kept in :attr:`ThresholdEmbeddingProvider.threshold_offset`, a buffer added
to every s (an O(1) schedule, no table pass, the same as adding the rate to every s each step), and a
coupled L2 pull toward a target. With Adam on s, a ramp rate above the learning rate always wins (the
budgets are reached); below it, the loss can hold the thresholds it needs. Linear in s, the ramp is
geometric in g, so successive budgets are reached at a steady pace. The paper's setting (-150 + coupled
weight decay) is the composed variant ``PEPConfig.paper()``.

Cost: on CPU the fused FBGEMM backward of unpooled lookups is several times slower than the pooled one,
so a training step costs about 4-5x the uniform provider's on small CPU batches; the thresholding and
pooling themselves add little.
"""

from __future__ import annotations

import abc
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.modules.provider import EmbeddingProvider
from recdim.modules.uniform import table_name

Gate = Callable[[torch.Tensor], torch.Tensor]

GATES: Dict[str, Gate] = {"sigmoid": torch.sigmoid, "exp": torch.exp}

ColumnRange = Tuple[int, int]


def soft_threshold(values: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """S(V, t) = sign(V) * relu(|V| - t), elementwise with broadcasting.

    Args:
        values: V, [n, K].
        threshold: t = g(s), broadcastable to [n, K].

    Returns:
        Tensor: [n, K]; zero wherever |V| <= t.
    """
    return torch.sign(values) * torch.relu(values.abs() - threshold)


def pool_rows(rows: torch.Tensor, lengths: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """Sums (or averages) the rows of each bag of a jagged batch; empty bags give zeros.

    Args:
        rows: [n, K] per-id rows, bags back to back.
        lengths: [B] ids per bag (sum n).
        mean: divide by the bag length (empty bags stay zero).

    Returns:
        Tensor: [B, K].

    Example::

        pool_rows(torch.ones(3, 4), torch.tensor([2, 0, 1]))   # rows [2, 0, 1] * ones(4)
    """
    batch = lengths.numel()
    if rows.size(0) == batch and bool((lengths == 1).all()):
        return rows  # single-valued: one row per bag, already in order
    segment = torch.repeat_interleave(torch.arange(batch, device=rows.device), lengths.long(), output_size=rows.size(0))
    out = rows.new_zeros(batch, rows.size(1)).index_add_(0, segment, rows)
    if mean:
        out = out / lengths.clamp(min=1).to(out.dtype).unsqueeze(1)
    return out


class Thresholds(nn.Module, abc.ABC):
    """Where the thresholds s live and how they pair with table values (the PEP granularity).

    ``columns_per_value`` is how many table columns each of the K embedding values takes: 1 when s is a
    dense parameter, 2 when s is stored beside each value in the table.
    """

    columns_per_value: int = 1

    @abc.abstractmethod
    def split(self, rows: torch.Tensor, counts: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Values and thresholds of looked-up rows.

        Args:
            rows: [n, columns_per_value * K] table rows of all features, feature after feature in the
                provider's order.
            counts: rows of each feature (sum n).

        Returns:
            (V [n, K], s broadcastable to [n, K]).
        """

    @abc.abstractmethod
    def split_piece(self, feature: int, piece: torch.Tensor, cols: ColumnRange) -> Tuple[torch.Tensor, torch.Tensor, ColumnRange]:
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

    def split(self, rows: torch.Tensor, counts: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        return rows, self.s

    def split_piece(self, feature: int, piece: torch.Tensor, cols: ColumnRange) -> Tuple[torch.Tensor, torch.Tensor, ColumnRange]:
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

    def split(self, rows: torch.Tensor, counts: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        return rows, self.s

    def split_piece(self, feature: int, piece: torch.Tensor, cols: ColumnRange) -> Tuple[torch.Tensor, torch.Tensor, ColumnRange]:
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

    def split(self, rows: torch.Tensor, counts: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        per_row = torch.repeat_interleave(self.s, torch.tensor(counts, device=self.s.device), output_size=rows.size(0))
        return rows, per_row.unsqueeze(1)

    def split_piece(self, feature: int, piece: torch.Tensor, cols: ColumnRange) -> Tuple[torch.Tensor, torch.Tensor, ColumnRange]:
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

    def split(self, rows: torch.Tensor, counts: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        pairs = rows.reshape(rows.size(0), -1, 2)
        return pairs[..., 0], pairs[..., 1]

    def split_piece(self, feature: int, piece: torch.Tensor, cols: ColumnRange) -> Tuple[torch.Tensor, torch.Tensor, ColumnRange]:
        if cols[0] % 2 or cols[1] % 2:
            raise ValueError(f"a shard splits a (value, threshold) pair: columns {cols}")
        return piece[:, 0::2], piece[:, 1::2], (cols[0] // 2, cols[1] // 2)

    def init_piece(self, piece: torch.Tensor, cols: ColumnRange) -> None:
        if cols[0] % 2 or cols[1] % 2:
            raise ValueError(f"a shard splits a (value, threshold) pair: columns {cols}")
        piece[:, 1::2] = self.init


class ThresholdEmbeddingProvider(EmbeddingProvider):
    """PEP: per-id soft-thresholded rows of one EmbeddingCollection, pooled per bag.

    Output of feature f for bag b: ``sum_{i in b} w_i * S(V_f[i], s)`` (``mean`` divides by the bag
    length), with S the soft threshold and ``g`` applied to ``s + threshold_offset``.

    Args:
        num_embeddings: rows per feature (``{feature: N}``), in output order.
        embedding_dim: K.
        thresholds: where s lives (the granularity), e.g. :class:`DimensionThreshold`.
        gate: g, s -> threshold; any callable or module (``torch.sigmoid`` by default).
        pooling: ``"sum"`` or ``"mean"``.
        is_weighted: multiply each thresholded row by its KJT weight before pooling.
        device: where tables are allocated (``meta`` to let DMP materialise them sharded).

    Call:
        features (KeyedJaggedTensor): keys ``feature_names``, batch size B.

    Returns:
        KeyedTensor: values [B, F * K].

    Example::

        provider = ThresholdEmbeddingProvider({"user": 944, "item": 1683}, 16, DimensionThreshold(16, -8.0))
        kt = provider(kjt)               # [B, 2 * 16]; values under sigmoid(s) read as 0
    """

    def __init__(
        self,
        num_embeddings: Dict[str, int],
        embedding_dim: int,
        thresholds: Thresholds,
        gate: Gate = torch.sigmoid,
        pooling: str = "sum",
        is_weighted: bool = False,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(list(num_embeddings), embedding_dim)
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        self.mean = pooling == "mean"
        self.is_weighted = is_weighted
        self.thresholds = thresholds
        self.gate = gate
        self.num_embeddings = {f: int(n) for f, n in num_embeddings.items()}
        self.tables = [
            EmbeddingConfig(
                name=table_name(f),
                embedding_dim=embedding_dim * thresholds.columns_per_value,
                num_embeddings=int(n),
                feature_names=[f],
            )
            for f, n in num_embeddings.items()
        ]
        self.ec = EmbeddingCollection(tables=self.tables, device=device)
        # The ramp schedule: added to every s (see the module docstring). Not trained.
        self.register_buffer("threshold_offset", torch.zeros(()))

    def threshold(self, s: torch.Tensor) -> torch.Tensor:
        """g(s + offset)."""
        return self.gate(s + self.threshold_offset)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        looked_up = self.ec(features)
        jts = [looked_up[name] for name in self._feature_names]
        counts = [jt.values().size(0) for jt in jts]
        # every feature at once: rows [n, c * K] feature after feature, bags [F * B] in the same order
        rows = torch.cat([self.table_output(jt.values()) for jt in jts])
        lengths = torch.cat([jt.lengths() for jt in jts])
        values, s = self.thresholds.split(rows, counts)
        pruned = soft_threshold(values, self.threshold(s))
        if self.is_weighted:
            by_feature = features.to_dict()
            weights = [by_feature[name].weights_or_none() for name in self._feature_names]
            if all(w is not None for w in weights):
                pruned = pruned * torch.cat(weights).unsqueeze(1)  # type: ignore[arg-type]
        num_features, k = len(jts), self._embedding_dim
        pooled = pool_rows(pruned, lengths, self.mean)  # [F * B, K]
        batch = pooled.size(0) // num_features
        return KeyedTensor(
            keys=self.feature_names,
            length_per_key=[k] * num_features,
            values=pooled.view(num_features, batch, k).transpose(0, 1).reshape(batch, num_features * k),
        )

    @torch.no_grad()
    def keep_mask(self, feature: int, piece: torch.Tensor, cols: ColumnRange) -> Tuple[torch.Tensor, ColumnRange]:
        """Which values of a local table shard survive the threshold.

        Args:
            feature: index of the shard's feature.
            piece: the shard, [r, columns_per_value * k].
            cols: the table columns it covers.

        Returns:
            (bool [r, k], the embedding columns [k0, k1) it covers).
        """
        values, s, value_cols = self.thresholds.split_piece(feature, piece, cols)
        return soft_threshold(values, self.threshold(s)) != 0, value_cols

    @torch.no_grad()
    def effective_weights(self, tables: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``S(V, s) = sign(V) · relu(|V| − g(s))`` for every id of every feature."""
        out: Dict[str, torch.Tensor] = {}
        for i, f in enumerate(self._feature_names):
            full = tables[table_name(f)]
            values, s, _ = self.thresholds.split_piece(i, full, (0, full.size(1)))
            out[f] = soft_threshold(values, self.threshold(s.to(values.device)))
        return out

    def threshold_parameters(self) -> List[nn.Parameter]:
        """The dense thresholds (empty when s lives in the table)."""
        return list(self.thresholds.parameters())

    def feature_of_table(self, name: str) -> int:
        """Index of the feature whose table is ``name``."""
        return [t.name for t in self.tables].index(name)

    def embedding_params(self) -> int:
        return sum(t.num_embeddings * self._embedding_dim for t in self.tables)

    def embedding_bytes(self) -> int:
        stored = sum(t.num_embeddings * t.embedding_dim for t in self.tables)
        return 4 * (stored + sum(p.numel() for p in self.thresholds.parameters()))


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
