"""PEP learnable soft thresholds: every looked-up row is pruned value by value before pooling.

PEP (Liu et al., ICLR 2021) replaces each embedding value V by

    S(V, s) = sign(V) * relu(|V| - g(s)),   g = sigmoid by default,

and trains the thresholds s jointly with V on the training loss. A value whose magnitude falls under its
threshold reads as 0 and gets no gradient (the sub-gradient of the paper's eq. 11:
dS/dV = 1[|V| > g(s)], dS/dg = -sign(V) 1[|V| > g(s)]), so the surviving non-zeros form the mask that
``recdim.search.pep`` snapshots at each memory budget.

Two lookup paths, chosen per feature (both exact, both TorchRec modules that DMP shards and the fused
optimizer trains in backward):

- **Single-valued features** (``single_valued``: every bag holds exactly one id, e.g. the dataset's
  ``CATEGORICAL`` and ``WEIGHTED`` fields) sit in an :class:`EmbeddingBagCollection` (sum pooling) and are
  thresholded *after* the pooled lookup: a bag of one id pools to that id's row, so S(pooled) = S(row).
  Per-sample weights are not given to the EBC (they would scale s with V); the thresholded row is
  multiplied by its weight instead. A bag of any other length on this path is an input error (raised,
  never silently summed). This is the fast path: FBGEMM's CPU backward of pooled lookups is several
  times faster than the unpooled one. While training, a batch whose distinct ids are at most
  ``unique_fraction`` of its lookups (skewed ids: the demo's 16,384 lookups hold about 2,850 distinct
  ids) looks up, thresholds and back-propagates each distinct id once and expands the rows to the batch
  (:mod:`~recdim.modules.unique_lookup`; the expansion's backward sums the repeats, as the fused kernel
  would have); a batch that is not worth it is looked up bag by bag, and the next ones are not examined
  for a while (``DEDUP_PROBE_EVERY``).
- **Multi-valued features** (bags, ``MULTI_CATEGORICAL``) sit in an :class:`EmbeddingCollection`
  (unpooled, one row per id): every row is thresholded, weighted, then each bag is summed (or averaged)
  over the jagged lengths here, in one pass over all such features.

Tables keep the uniform provider's names (``t_<feature>``) on either path;
:meth:`ThresholdEmbeddingProvider.table_key` gives each table's state-dict key
(``ebc.embedding_bags.<t>.weight`` or ``ec.embeddings.<t>.weight``), which also seeds its initial values.

Where s lives (its granularity) is a :class:`~recdim.modules.threshold_granularity.Thresholds` module,
chosen by composition:

- :class:`GlobalThreshold` (one s), :class:`DimensionThreshold` (s in R^K), :class:`FeatureThreshold`
  (one s per sparse feature, i.e. per field) are ordinary dense parameters: data-parallel, trained by the
  dense optimizer (Adam, ``train.lr``, ``train.weight_decay``) on the training loss. They are not
  architecture parameters.
- :class:`FeatureDimensionThreshold` (s in R^{N x K}) is as large as the table, so it is stored *in* the
  table: each row holds K (value, threshold) pairs interleaved, [N, 2K]. One lookup returns both (on the
  pooled path the pooled row of one id is its pairs), the planner shards them together (any row or
  column split keeps pairs whole, shard widths being multiples of 4), and s is trained by the table's
  fused optimizer (``train.embedding_optimizer`` with ``train.embedding_lr``; with ``rowwise_adagrad``
  the values and thresholds of a row share one step size). A second [N, K] table of thresholds looked
  up with the same ids costs more: FBGEMM's CPU kernels pay per lookup (index pass, per-row update) more
  than per column, and one 2K-wide lookup + fused update of the demo's batch costs about 5.3 ms against
  8.0 ms for two K-wide ones (3.7 ms for the uniform model's one; 64 against 111 ms, 55 ms uniform, for
  the Criteo-shaped 26 x 100k tables at batch 4096).

Which values survive (the masks and counts of ``recdim.search.pep``): with thresholds in the table and a
gate of known inverse, by *survival keys* (:func:`~recdim.modules.soft_threshold.survival_keys`,
``g^{-1}(|V|) - s > offset``), which move only when a row is trained, not with the offset, so that
``recdim.search.kept_counter`` can keep the count up to date from the rows each step touched
(:meth:`ThresholdEmbeddingProvider.take_touched`); otherwise directly, ``|V| > g(s + offset)``.

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

Cost (CPU, one thread, process time, ``benchmarks/search_overhead.py``, the defaults): on the demo (8
single-valued features, B = 2048) a PEP step costs about 1.17-1.23x the uniform model's (1.2-1.5x before
counts on a schedule and the radix-sorted gradient of the distinct-id expansion; 1.4-1.75x before
distinct-id lookups and incremental counts); on the Criteo-shaped tables (26 x 100k rows, B = 4096) about
1.07-1.10x with sampled counts far from a budget (1.34-1.40x counting exactly on the schedule, 7-10x with a
full count every step). What remains is the elementwise threshold (fused, see
:mod:`~recdim.modules.soft_threshold`; about 16 ms of 1.7M values at Criteo size, some ten float passes
that one pass inside the lookup kernel would replace), the twice-wide lookup and, at Criteo size,
re-keying the values trained between counts (``recdim.search.kept_counter``).
"""

from __future__ import annotations

from typing import Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torchrec.modules.embedding_configs import BaseEmbeddingConfig, EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.modules.provider import EmbeddingProvider
from recdim.modules.soft_threshold import (  # noqa: F401  (re-exported)
    GATE_INVERSES,
    GATES,
    NEG_GATE_GRADS,
    Gate,
    fast_soft_threshold,
    paired_soft_threshold,
    soft_threshold,
    survival_keys,
)
from recdim.modules.threshold_granularity import (  # noqa: F401  (re-exported)
    ColumnRange,
    DimensionThreshold,
    FeatureDimensionThreshold,
    FeatureThreshold,
    GlobalThreshold,
    Thresholds,
    make_thresholds,
)
from recdim.modules.uniform import table_name
from recdim.modules.unique_lookup import UniqueIds, expand_rows, unique_ids

# Single-valued batches whose distinct ids are at most this fraction of their lookups are looked up once per
# distinct id (see ThresholdEmbeddingProvider._pooled_path); above it the deduplication costs more than it saves.
UNIQUE_FRACTION = 0.5
# After a batch that was not worth deduplicating, this many training batches pass before the next look.
DEDUP_PROBE_EVERY = 64


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


def check_single_valued(lengths: torch.Tensor, features: List[str], batch: int) -> None:
    """Raises ``ValueError`` unless every bag of these (declared single-valued) features holds one id.

    Args:
        lengths: [G * B] bag lengths, feature after feature.
        features: the G feature names (for the message).
        batch: B.
    """
    ok = lengths == 1
    if lengths.device.type != "cpu":
        torch._assert_async(ok.all(), f"PEP: a feature declared single-valued ({features}) got a bag of length != 1")
    elif not bool(ok.all()):
        bad = [f for f, good in zip(features, ok.view(len(features), batch).all(1).tolist()) if not good]
        raise ValueError(
            f"PEP: features {bad} are declared single-valued (pooled lookup) but got bags of length != 1; "
            "a pooled row would sum several ids before the threshold. Declare them multi-valued."
        )


class ThresholdEmbeddingProvider(EmbeddingProvider):
    """PEP: soft-thresholded rows, per id before pooling (bags) or per pooled row (single-valued features).

    Output of feature f for bag b: ``sum_{i in b} w_i * S(V_f[i], s)`` (``mean`` divides by the bag
    length), with S the soft threshold and ``g`` applied to ``s + threshold_offset``. Features in
    ``single_valued`` are looked up in ``self.ebc`` (EmbeddingBagCollection) and must carry exactly one id
    per bag (checked); the others in ``self.ec`` (EmbeddingCollection). ``self.tables`` lists every
    table's config in feature order; either module is ``None`` when no feature takes its path.

    Args:
        num_embeddings: rows per feature (``{feature: N}``), in output order.
        embedding_dim: K.
        thresholds: where s lives (the granularity), e.g. :class:`DimensionThreshold`.
        gate: g, s -> threshold; any callable or module (``torch.sigmoid`` by default).
        pooling: ``"sum"`` or ``"mean"``.
        is_weighted: multiply each thresholded row by its KJT weight (before pooling a bag).
        device: where tables are allocated (``meta`` to let DMP materialise them sharded).
        single_valued: features whose every bag holds exactly one id (pooled lookup, the fast path).
        unique_fraction: while training, a batch of the single-valued features whose distinct ids are at
            most this fraction of its lookups is looked up once per distinct id (same values and gradients;
            0 turns it off).

    Call:
        features (KeyedJaggedTensor): keys ``feature_names`` (any order), batch size B.

    Returns:
        KeyedTensor: values [B, F * K], features in ``feature_names`` order.

    Example::

        provider = ThresholdEmbeddingProvider({"user": 944, "genres": 19}, 16, DimensionThreshold(16, -8.0),
                                              single_valued=["user"])
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
        single_valued: Collection[str] = (),
        unique_fraction: float = UNIQUE_FRACTION,
    ) -> None:
        super().__init__(list(num_embeddings), embedding_dim)
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        features = list(num_embeddings)
        unknown = set(single_valued) - set(features)
        if unknown:
            raise ValueError(f"single_valued names unknown features: {sorted(unknown)}")
        self.mean = pooling == "mean"
        self.is_weighted = is_weighted
        self.thresholds = thresholds
        self.gate = gate
        self.num_embeddings = {f: int(n) for f, n in num_embeddings.items()}
        width = embedding_dim * thresholds.columns_per_value
        self.bag_features = [f for f in features if f in single_valued]
        self.seq_features = [f for f in features if f not in single_valued]
        self.bag_tables = [
            EmbeddingBagConfig(
                name=table_name(f),
                embedding_dim=width,
                num_embeddings=self.num_embeddings[f],
                feature_names=[f],
                pooling=PoolingType.SUM,
            )
            for f in self.bag_features
        ]
        self.seq_tables = [
            EmbeddingConfig(
                name=table_name(f), embedding_dim=width, num_embeddings=self.num_embeddings[f], feature_names=[f]
            )
            for f in self.seq_features
        ]
        by_name: Dict[str, BaseEmbeddingConfig] = {t.name: t for t in [*self.bag_tables, *self.seq_tables]}
        self.tables: List[BaseEmbeddingConfig] = [by_name[table_name(f)] for f in features]
        # per-sample weights are applied after the threshold, so the EBC itself is unweighted
        self.ebc = EmbeddingBagCollection(tables=self.bag_tables, device=device) if self.bag_features else None
        self.ec = EmbeddingCollection(tables=self.seq_tables, device=device) if self.seq_features else None
        # input order: pooled features first, then per-id ones; output order restored by _inverse
        self._input_order = self.bag_features + self.seq_features
        order = [features.index(f) for f in self._input_order]
        self.register_buffer(
            "_bag_index", torch.tensor(order[: len(self.bag_features)], dtype=torch.int64), persistent=False
        )
        self.register_buffer(
            "_seq_index", torch.tensor(order[len(self.bag_features) :], dtype=torch.int64), persistent=False
        )
        inverse = [order.index(i) for i in range(len(features))]
        self._inverse: Optional[List[int]] = None if inverse == list(range(len(features))) else inverse
        self._kt_perm: Optional[Tuple[Tuple[str, ...], Optional[List[int]]]] = None
        # known non-negative gates get the fused soft threshold (same values and sub-gradients)
        self._fused = gate in NEG_GATE_GRADS
        self._paired = self._fused and isinstance(thresholds, FeatureDimensionThreshold)
        # The ramp schedule: added to every s (see the module docstring). Not trained.
        self.register_buffer("threshold_offset", torch.zeros(()))
        sizes = [self.num_embeddings[f] for f in self.bag_features]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.register_buffer("_bag_offsets", torch.tensor(starts, dtype=torch.int64), persistent=False)
        self.unique_fraction = unique_fraction
        self._touched: Optional[Dict[str, torch.Tensor]] = None  # table -> bool [N], rows looked up
        self._probe_in = 0
        self._workspace: Optional[torch.Tensor] = None
        self._row_offsets_cache: Optional[torch.Tensor] = None
        self._shift_cache: Optional[Tuple[List[int], torch.Tensor]] = None

    def track_touched(self, on: bool = True) -> None:
        """Start (or stop) recording the ids that training lookups touch (see :meth:`take_touched`)."""
        self._touched = {} if on else None

    def has_touched(self) -> bool:
        """Whether a training lookup has touched rows since the last :meth:`take_touched`."""
        return any(bool(rows.any()) for rows in self._touched.values()) if self._touched else False

    def take_touched(self) -> Dict[str, torch.Tensor]:
        """The ids looked up by this rank's training forwards since the last call, by table name (each
        listed once, ascending; kept as one bit per row between calls, so any number of steps may pass),
        and starts over. Only rows listed here can have been changed by a fused
        (sparse) table optimizer since then. Empty unless :meth:`track_touched` is on.

        Example::

            provider.track_touched()
            trainer.train_step(batch)
            provider.take_touched()    # {'t_user': tensor([9, 0, 3]), ...}
        """
        if self._touched is None:
            return {}
        out = {}
        for name, rows in self._touched.items():
            ids = rows.nonzero().squeeze(1)
            if ids.numel():
                out[name] = ids
                rows.zero_()
        return out

    def _dedup_stride(self, distinct: UniqueIds, lookups: int) -> Optional[int]:
        """Bags per feature of the deduplicated lookup, or ``None`` to look every id up: the most distinct ids
        of any feature, agreed by every rank (sharded lookups need one stride), when every rank's distinct
        ids are at most ``unique_fraction`` of its lookups."""
        use = distinct.num_unique <= self.unique_fraction * lookups
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            agreed = torch.tensor([0 if use else 1, distinct.width], device=self.threshold_offset.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            return None if int(agreed[0]) else max(1, int(agreed[1]))
        return max(1, distinct.width) if use else None

    def _row_offsets(self, batch: int, values: torch.Tensor) -> torch.Tensor:
        """[G * B] int64: the first row of each lookup's table among the single-valued features' tables."""
        cached = self._row_offsets_cache
        if cached is None or cached.numel() != batch * len(self.bag_features) or cached.device != values.device:
            cached = self._bag_offsets.to(values.device).repeat_interleave(batch)
            self._row_offsets_cache = cached
        return cached

    def _id_workspace(self, device: torch.device) -> torch.Tensor:
        """Scratch for :func:`unique_ids`: one int64 per row of the single-valued features' tables."""
        if self._workspace is None or self._workspace.device != device:
            self._workspace = torch.empty(
                sum(self.num_embeddings[f] for f in self.bag_features), dtype=torch.int64, device=device
            )
        return self._workspace

    def _record(self, features: Sequence[str], ids: Sequence[torch.Tensor]) -> None:
        """Notes the ids a training lookup of ``features`` touches (repeats allowed: one bit per row)."""
        if self._touched is not None and torch.is_grad_enabled() and self.training:
            for f, i in zip(features, ids):
                rows = self._touched.get(table_name(f))
                if rows is None or rows.device != i.device:
                    rows = torch.zeros(self.num_embeddings[f], dtype=torch.bool, device=i.device)
                    self._touched[table_name(f)] = rows
                rows.index_fill_(0, i.detach().to(torch.int64), True)

    def threshold(self, s: torch.Tensor) -> torch.Tensor:
        """g(s + offset)."""
        return self.gate(s + self.threshold_offset)

    def _prune(self, values: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """S(V, g(s + offset)), fused when the gate is known."""
        threshold = self.threshold(s)
        return fast_soft_threshold(values, threshold) if self._fused else soft_threshold(values, threshold)

    def table_key(self, name: str) -> str:
        """State-dict key of table ``name``, relative to the provider.

        Example::

            provider.table_key("t_user")   # 'ebc.embedding_bags.t_user.weight' for a single-valued feature
        """
        if name in {t.name for t in self.bag_tables}:
            return f"ebc.embedding_bags.{name}.weight"
        if name in {t.name for t in self.seq_tables}:
            return f"ec.embeddings.{name}.weight"
        raise KeyError(f"no table {name!r}")

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        features = self.ordered_features(features, self._input_order)
        if self.ebc is not None and self.ec is not None:
            bags, seqs = features.split([len(self.bag_features), len(self.seq_features)])
            parts = [self._pooled_path(bags), self._per_id_path(seqs)]
            out = torch.cat(parts, dim=1)
        else:
            out = self._pooled_path(features) if self.ebc is not None else self._per_id_path(features)
        if self._inverse is not None:
            out = out[:, self._inverse]
        batch, num_features, k = out.size(0), out.size(1), self._embedding_dim
        return KeyedTensor(
            keys=self.feature_names, length_per_key=[k] * num_features, values=out.reshape(batch, num_features * k)
        )

    def _pooled_path(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        """Single-valued features: S of each pooled row (= the row of the bag's one id), weighted. [B, G, K].

        While training, a batch whose distinct ids are few enough (``unique_fraction``) looks each distinct id
        up, thresholds and back-propagates it once and expands the rows to the batch
        (:mod:`~recdim.modules.unique_lookup`); otherwise every bag is looked up.
        """
        assert self.ebc is not None
        batch, group = kjt.stride(), len(self.bag_features)
        check_single_valued(kjt.lengths(), self.bag_features, batch)
        weights = kjt.weights_or_none()
        found = self._distinct_ids(kjt.values(), batch) if torch.is_grad_enabled() and self.training else None
        if found is not None:
            distinct, stride = found
            kjt = KeyedJaggedTensor(
                keys=kjt.keys(), values=distinct.ids, lengths=distinct.lengths(stride), stride=stride
            )
        else:
            stride = batch
            if weights is not None:
                kjt = KeyedJaggedTensor(keys=kjt.keys(), values=kjt.values(), lengths=kjt.lengths(), stride=batch)
        kt = self.ebc(kjt)
        rows = self.table_output(kt.values()).view(stride, group, -1)
        perm = self._key_permutation(kt)
        expand = found[0].expand if found is not None else None
        if perm is not None and expand is not None and self._paired:
            # per-value thresholds do not care about the feature order: expand from the lookup's own columns
            expand = expand.view(batch, group).add(self._column_shift(perm, rows.device)).view(-1)
        elif perm is not None:
            rows = rows[:, perm]
        if self._paired:
            pruned = paired_soft_threshold(rows, self.threshold_offset, self.gate)
        else:
            pruned = self._prune(*self.thresholds.split_grouped(rows, self._bag_index))
        if expand is not None:
            pruned = expand_rows(pruned.reshape(-1, pruned.size(-1)), expand).view(batch, group, -1)
        if self.is_weighted and weights is not None:
            pruned = pruned * weights.view(group, batch).t().unsqueeze(-1)  # one weight per bag
        return pruned

    def _distinct_ids(self, values: torch.Tensor, batch: int) -> Optional[Tuple[UniqueIds, int]]:
        """The training batch's distinct ids and the stride of their lookup, or ``None`` to look every bag up
        (they are not few enough; then the next ``DEDUP_PROBE_EVERY - 1`` batches are not even examined).
        Records the touched ids either way."""
        if self.unique_fraction <= 0 or self._probe_in > 0:
            self._probe_in = max(0, self._probe_in - 1)
            self._record(self.bag_features, values.split(batch))
            return None
        distinct = unique_ids(values, self._row_offsets(batch, values), batch, self._id_workspace(values.device))
        self._record(self.bag_features, distinct.per_feature())
        stride = self._dedup_stride(distinct, values.numel())
        if stride is None:
            self._probe_in = DEDUP_PROBE_EVERY - 1
            return None
        return distinct, stride

    def _column_shift(self, perm: List[int], device: torch.device) -> torch.Tensor:
        """[G] int64 ``perm[g] - g``: moves an index into [., G] rows in feature order to the lookup's columns."""
        cached = self._shift_cache
        if cached is None or cached[0] != perm or cached[1].device != device:
            shift = torch.tensor(perm, device=device) - torch.arange(len(perm), device=device)
            self._shift_cache = cached = (list(perm), shift)
        return cached[1]

    def _key_permutation(self, kt: KeyedTensor) -> Optional[List[int]]:
        """Columns that put the (possibly sharded) EBC's output keys in ``bag_features`` order."""
        keys = tuple(kt.keys())
        if self._kt_perm is None or self._kt_perm[0] != keys:
            self._kt_perm = (
                keys,
                None if list(keys) == self.bag_features else [keys.index(f) for f in self.bag_features],
            )
        return self._kt_perm[1]

    def _per_id_path(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        """Bags: S of every id's row, weighted, summed (or averaged) per bag. [B, G, K]."""
        assert self.ec is not None
        if self._touched is not None and torch.is_grad_enabled() and self.training:
            self._record(self.seq_features, kjt.values().split(kjt.length_per_key()))
        looked_up = self.ec(kjt)
        jts = [looked_up[name] for name in self.seq_features]
        counts = [jt.values().size(0) for jt in jts]
        # every feature at once: rows [n, c * K] feature after feature, bags [G * B] in the same order
        rows = self.table_output(torch.cat([jt.values() for jt in jts]))
        lengths = torch.cat([jt.lengths() for jt in jts])
        if self._paired:
            pruned = paired_soft_threshold(rows, self.threshold_offset, self.gate)
        else:
            pruned = self._prune(*self.thresholds.split(rows, counts, self._seq_index))
        weights = kjt.weights_or_none()
        if self.is_weighted and weights is not None:
            pruned = pruned * weights.unsqueeze(1)
        group, k = len(jts), self._embedding_dim
        pooled = pool_rows(pruned, lengths, self.mean)  # [G * B, K]
        return pooled.view(group, pooled.size(0) // group, k).transpose(0, 1)

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
        return self._kept(values, s), value_cols

    @torch.no_grad()
    def count_kept(self, pieces: Sequence[Tuple[int, torch.Tensor, ColumnRange]]) -> torch.Tensor:
        """How many values of these local table shards survive the threshold.

        With dense thresholds, whole-width pieces are counted together (one concatenation, one pass:
        per-table passes would cost more in dispatch than in arithmetic), column shards one by one; with
        thresholds in the table, piece by piece (no copy).

        Args:
            pieces: ``(feature index, local piece [r, columns_per_value * k], table columns)``.

        Returns:
            Tensor: int64 scalar, on the device of ``threshold_offset``.

        Example::

            nnz = provider.count_kept([(0, provider.ec.embeddings["t_user"].weight, (0, 16))])
        """
        total = torch.zeros((), dtype=torch.int64, device=self.threshold_offset.device)
        width = self._embedding_dim * self.thresholds.columns_per_value
        batched = self.thresholds.columns_per_value == 1
        whole = [(f, piece) for f, piece, cols in pieces if batched and tuple(cols) == (0, width)]
        for f, piece, cols in pieces:
            if not (batched and tuple(cols) == (0, width)):
                total += torch.count_nonzero(self.keep_mask(f, piece, cols)[0]).to(total.device)
        if whole:
            rows = torch.cat([piece for _, piece in whole]) if len(whole) > 1 else whole[0][1]
            index = torch.tensor([f for f, _ in whole], dtype=torch.int64, device=rows.device)
            values, s = self.thresholds.split(rows, [piece.size(0) for _, piece in whole], index)
            total += torch.count_nonzero(self._kept(values, s)).to(total.device)
        return total

    @property
    def keyed_survival(self) -> bool:
        """Whether survival is decided by :func:`~recdim.modules.soft_threshold.survival_keys` (thresholds
        in the table and a gate with a known inverse): a value's key changes only when its row does."""
        return self.thresholds.columns_per_value > 1 and self.gate in GATE_INVERSES

    def survival_keys(self, values: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """float64 keys of these values: they survive iff ``key > threshold_offset`` (see
        :func:`~recdim.modules.soft_threshold.survival_keys`)."""
        return survival_keys(values, s, self.gate)

    def _kept(self, values: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``S(V, g(s + offset)) != 0``: by survival keys when :attr:`keyed_survival`, else directly:
        |V| - t > 0 iff |V| > t in IEEE arithmetic, and sign(V) != 0 iff V != 0 (implied when the gate is
        known non-negative)."""
        if self.keyed_survival:
            return self.survival_keys(values, s) > self.threshold_offset.to(torch.float64)
        kept = values.abs() > self.threshold(s)
        return kept if self._fused else kept & (values != 0)

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
