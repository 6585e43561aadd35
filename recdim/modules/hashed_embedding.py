"""Row-sharing embeddings: the hashing trick and quotient-remainder (QR) tables, full width K, fewer rows.

Per feature (its :class:`~recdim.layout.shared_rows.SharedRows` layout, divisor m):

- full: table ``t_<f>`` ``[N, K]``, id i reads row i;
- hash: table ``t_<f>`` ``[m, K]``, id i reads row ``i mod m``;
- QR: tables ``t_<f>__q`` ``[ceil(N / m), K]`` and ``t_<f>__r`` ``[m, K]``; id i reads
  ``combine(W_q[i // m], W_r[i mod m])`` (:class:`QRCombine`: elementwise product, the paper's best, or sum).

Lookup: every id is remapped (one ``//`` and one ``mod`` by a per-value divisor over the whole KJT) and
routed to the KJT key of its table. Full and hashed tables, and QR tables combined by sum, are linear in
their rows, so they sit in one :class:`EmbeddingBagCollection` and are sum-pooled by the fused kernels
(weighted or not; mean pooling divides by the bag lengths afterwards). A product of rows does not commute
with pooling, so QR tables combined by product sit in an :class:`EmbeddingCollection` (one row per id):
the rows of each id are multiplied, weighted, and each bag summed (or averaged) here. DMP shards both
collections like any other provider's.

Training: the tables are TorchRec tables, trained by the fused table optimizer (``train.embedding_optimizer``;
no weight decay there, as for every provider); ``train.embedding_l2`` acts on the pooled output of any
provider, so it reaches these tables through their products or sums. Initial values come from
:func:`~recdim.modules.table_init.init_tables` (N(0, std^2) per table); with the product, the remainder
tables are then moved to ``1 + N(0, std^2)`` (:meth:`HashedEmbeddingProvider.init_shifts`), so that an
id starts near its quotient row instead of at std^2 scale, where it would learn at std times the rate.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.config import ModelConfig
from recdim.layout.shared_rows import DIVISOR_BYTES, SharedRows, Sharing
from recdim.modules.provider import EmbeddingProvider
from recdim.modules.threshold import pool_rows
from recdim.modules.uniform import table_name

QUOTIENT, REMAINDER = "q", "r"


class QRCombine(str, Enum):
    """How the quotient and remainder rows of an id make its embedding (Shi et al. 2020, section 3)."""

    MULT = "mult"
    """Elementwise product (the paper's best operation)."""
    ADD = "add"
    """Elementwise sum (linear: pooled by the fused kernels)."""

    def __call__(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return q * r if self == QRCombine.MULT else q + r


def qr_key(feature: str, part: str) -> str:
    """KJT key (and, as ``t_<key>``, table name) of a QR feature's quotient (``q``) or remainder (``r``) part."""
    return f"{feature}__{part}"


def _bag_config(key: str, rows: int, embedding_dim: int) -> EmbeddingBagConfig:
    """A sum-pooled table (mean pooling divides afterwards: TorchRec's unsharded mean takes no weights)."""
    return EmbeddingBagConfig(
        name=table_name(key),
        embedding_dim=embedding_dim,
        num_embeddings=rows,
        feature_names=[key],
        pooling=PoolingType.SUM,
    )


class HashedEmbeddingProvider(EmbeddingProvider):
    """K-wide TorchRec tables with fewer rows than ids: hashed (``i mod m``) or quotient-remainder.

    Tables are ``t_<f>`` (full and hashed features) and ``t_<f>__q`` / ``t_<f>__r`` (QR) in ``self.ebc``
    (pooled) or, for QR with :attr:`QRCombine.MULT`, in ``self.ec`` (per id). Ids must lie in ``[0, N_f)``
    (not checked).

    Args:
        layouts: one per feature, in output order (e.g. ``qr_plan(...).layouts``).
        embedding_dim: K.
        combine: how QR rows combine.
        pooling: ``"sum"`` or ``"mean"``.
        is_weighted: features carry per-value weights.
        device: where tables are allocated (``meta`` to let DMP materialise them sharded); the divisors
            live on the CPU then, and DMP moves them with the dense buffers.

    Call:
        features (KeyedJaggedTensor): keys ``feature_names``, batch size B.

    Returns:
        KeyedTensor: values [B, F * K].

    Example::

        plan = qr_plan({"user": 944, "item": 1683}, 16, 4.0)
        provider = HashedEmbeddingProvider(plan.layouts, 16)
        kt = provider(kjt)       # [B, 2 * 16]; tables t_user__q [5, 16], t_user__r [230, 16], ...
    """

    def __init__(
        self,
        layouts: Sequence[SharedRows],
        embedding_dim: int,
        combine: QRCombine = QRCombine.MULT,
        pooling: str = "sum",
        is_weighted: bool = False,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__([s.feature for s in layouts], embedding_dim)
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        self.layouts: List[SharedRows] = list(layouts)
        self.combine = QRCombine(combine)
        self.pooling = pooling
        self.is_weighted = is_weighted
        buf_device = device if device is not None and device.type != "meta" else torch.device("cpu")
        per_id = self.combine == QRCombine.MULT
        # (feature index, KJT key, "" | "q" | "r", rows) of every table, pooled ones and per-id ones.
        self._bag_keys: List[Tuple[int, str, str]] = []
        self._seq_keys: List[Tuple[int, str, str]] = []
        self.bag_tables: List[EmbeddingBagConfig] = []
        self.seq_tables: List[EmbeddingConfig] = []
        for fi, s in enumerate(self.layouts):
            if s.sharing == Sharing.QR:
                for part, rows in ((QUOTIENT, s.quotient_rows), (REMAINDER, s.divisor)):
                    key = qr_key(s.feature, part)
                    if per_id:
                        self._seq_keys.append((fi, key, part))
                        self.seq_tables.append(
                            EmbeddingConfig(
                                name=table_name(key),
                                embedding_dim=embedding_dim,
                                num_embeddings=rows,
                                feature_names=[key],
                            )
                        )
                    else:
                        self._bag_keys.append((fi, key, part))
                        self.bag_tables.append(_bag_config(key, rows, embedding_dim))
            else:
                self._bag_keys.append((fi, s.feature, ""))
                self.bag_tables.append(_bag_config(s.feature, s.divisor, embedding_dim))
        self.tables = [*self.bag_tables, *self.seq_tables]
        self.ebc = (
            EmbeddingBagCollection(tables=self.bag_tables, is_weighted=is_weighted, device=device)
            if self.bag_tables
            else None
        )
        self.ec = EmbeddingCollection(tables=self.seq_tables, device=device) if self.seq_tables else None
        self._seq_features = sorted({fi for fi, _, _ in self._seq_keys})
        self.register_buffer(
            "_divisors",
            torch.tensor([s.divisor for s in self.layouts], dtype=torch.int64, device=buf_device),
            persistent=False,
        )

    def layout(self, feature: str) -> SharedRows:
        """The row layout of ``feature``."""
        return self.layouts[self._feature_names.index(feature)]

    def init_shifts(self) -> Dict[str, float]:
        """``{table name: c}``: constants to add to the tables after :func:`init_tables` (the remainder tables
        of :attr:`QRCombine.MULT`: 1, so that a product starts near its quotient row)."""
        if self.combine != QRCombine.MULT:
            return {}
        return {table_name(key): 1.0 for _, key, part in self._seq_keys if part == REMAINDER}

    # ----------------------------------------------------------------------------- lookup

    def _remapped(
        self,
        keys: Sequence[Tuple[int, str, str]],
        quo: List[torch.Tensor],
        rem: List[torch.Tensor],
        lengths: List[torch.Tensor],
        weights: Optional[List[torch.Tensor]],
        stride: int,
    ) -> KeyedJaggedTensor:
        """The KJT of ``keys`` (in table order): each key's ids are its feature's quotients or remainders."""
        values = [quo[fi] if part == QUOTIENT else rem[fi] for fi, _, part in keys]
        return KeyedJaggedTensor(
            keys=[key for _, key, _ in keys],
            values=torch.cat(values),
            lengths=torch.cat([lengths[fi] for fi, _, _ in keys]),
            stride=stride,
            weights=None if weights is None else torch.cat([weights[fi] for fi, _, _ in keys]),
        )

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        names = self._feature_names
        features = self.ordered_features(features)
        weights = features.weights_or_none()
        if self.is_weighted and weights is None:
            raise ValueError("this provider is weighted: the KJT needs per-value weights")
        B, F, K = features.stride(), len(names), self._embedding_dim
        ids = features.values().to(torch.int64)
        per_key = features.length_per_key()
        divisors = self._divisors.to(ids.device).repeat_interleave(
            torch.tensor(per_key, device=ids.device), output_size=ids.numel()
        )
        quo = torch.div(ids, divisors, rounding_mode="floor").split(per_key)
        rem = torch.remainder(ids, divisors).split(per_key)  # the id itself for a full table
        lengths = list(features.lengths().split(B))
        w = None if weights is None or not self.is_weighted else list(weights.split(per_key))
        out: List[Optional[torch.Tensor]] = [None] * F
        if self.ebc is not None:
            pooled = self.ebc(self._remapped(self._bag_keys, quo, rem, lengths, w, B)).to_dict()
            for fi, key, _ in self._bag_keys:
                rows = self.table_output(pooled[key])
                out[fi] = rows if out[fi] is None else self.combine(out[fi], rows)
            if self.pooling == "mean":
                for fi in {fi for fi, _, _ in self._bag_keys}:
                    out[fi] = out[fi] / lengths[fi].clamp(min=1).unsqueeze(1).to(out[fi].dtype)
        if self.ec is not None:
            looked_up = self.ec(self._remapped(self._seq_keys, quo, rem, lengths, None, B))
            rows = [
                self.combine(
                    self.table_output(looked_up[qr_key(names[fi], QUOTIENT)].values()),
                    self.table_output(looked_up[qr_key(names[fi], REMAINDER)].values()),
                )
                for fi in self._seq_features
            ]
            per_id = torch.cat(rows)
            if w is not None:
                per_id = per_id * torch.cat([w[fi] for fi in self._seq_features]).unsqueeze(1).to(per_id.dtype)
            bags = torch.cat([lengths[fi] for fi in self._seq_features])
            pooled_seq = pool_rows(per_id, bags, self.pooling == "mean").view(len(self._seq_features), B, K)
            for j, fi in enumerate(self._seq_features):
                out[fi] = pooled_seq[j]
        return KeyedTensor(keys=names, length_per_key=[K] * F, values=torch.cat(out, dim=1))  # type: ignore[arg-type]

    # ----------------------------------------------------------------------------- accounting

    @torch.no_grad()
    def effective_weights(self, tables: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Every id's K-wide vector: its row (full), row ``i mod m`` (hash) or the combined QR rows.

        Args:
            tables: ``{table name: [rows, K]}`` full values of this provider's tables.

        Returns:
            ``{feature: [N, K]}``.
        """
        out: Dict[str, torch.Tensor] = {}
        for s in self.layouts:
            ids = torch.arange(s.num_embeddings)
            if s.sharing == Sharing.QR:
                q = tables[table_name(qr_key(s.feature, QUOTIENT))].float().cpu()
                r = tables[table_name(qr_key(s.feature, REMAINDER))].float().cpu()
                out[s.feature] = self.combine(q[ids // s.divisor], r[ids % s.divisor])
            else:
                out[s.feature] = tables[table_name(s.feature)].float().cpu()[ids % s.divisor]
        return out

    def embedding_params(self) -> int:
        """K per stored row, over every table."""
        return sum(t.num_embeddings for t in self.tables) * self._embedding_dim

    def embedding_bytes(self) -> int:
        """float32 values plus one int64 divisor per shared feature (as
        :attr:`~recdim.layout.shared_rows.SharingPlan.bytes`)."""
        return 4 * self.embedding_params() + DIVISOR_BYTES * sum(s.shared for s in self.layouts)


def hashed_provider_factory(
    layouts: Sequence[SharedRows], combine: QRCombine = QRCombine.MULT
) -> Callable[[ModelConfig, Dict[str, int], bool, torch.device], EmbeddingProvider]:
    """A ``ProviderFactory`` (see :mod:`recdim.train.build`) building a :class:`HashedEmbeddingProvider`.

    Args:
        layouts: the layouts of every feature the model may use (a model over fewer features takes theirs).
        combine: how QR rows combine.

    Returns:
        ``factory(model_cfg, num_embeddings, weighted, device) -> provider``; it checks that every layout
        has its feature's N.

    Example::

        session = open_session(cfg, hashed_provider_factory(hash_plan(rows, 16, 4.0).layouts))
    """
    by_feature = {s.feature: s for s in layouts}

    def factory(
        cfg: ModelConfig, num_embeddings: Dict[str, int], weighted: bool, device: torch.device
    ) -> EmbeddingProvider:
        missing = sorted(set(num_embeddings) - set(by_feature))
        if missing:
            raise ValueError(f"no row layouts for features {missing}")
        wrong = [f for f, n in num_embeddings.items() if by_feature[f].num_embeddings != int(n)]
        if wrong:
            raise ValueError(f"the row layouts of {wrong} are for other numbers of ids than the model's")
        chosen = [by_feature[f] for f in num_embeddings]
        return HashedEmbeddingProvider(chosen, cfg.embedding_dim, combine, cfg.pooling, weighted, device)

    return factory
