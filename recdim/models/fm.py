"""Factorization Machine on K-wide embeddings: bias + first-order + second-order terms.

The pieces (:class:`FirstOrder`, :class:`SecondOrder`, :class:`FactorizationMachine`) are reused by
DeepFM and Wide&Deep through composition. The first-order term reads its per-id weights from the
embeddings (``model.linear = "embedding"``) or from a :class:`LinearTable` of its own (``"table"``), which
no search method sees, so it survives a model whose embeddings are all pruned away (PEP-0).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.models.base import InteractionArch
from recdim.modules.provider import stack_embeddings
from recdim.modules.table_init import TABLE_PARAM, local_pieces

# Per-id weights packed per table row: FBGEMM's kernels want widths that are multiples of 4.
IDS_PER_ROW = 4


def fm_second_order(vectors: torch.Tensor) -> torch.Tensor:
    """FM pairwise term sum_{i<j} <v_i, v_j> in O(N K): 0.5 * ((sum v)^2 - sum v^2), summed over K.

    Args:
        vectors: [B, N, K].

    Returns:
        Tensor: [B].

    Example::

        s = fm_second_order(torch.randn(8, 5, 16))  # [8]
    """
    square_of_sum = vectors.sum(dim=1).pow(2)
    sum_of_squares = vectors.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)


def linear_table_name(feature: str) -> str:
    """Name of the TorchRec table that holds ``feature``'s first-order weights in a :class:`LinearTable`."""
    return f"lin_{feature}"


class LinearTable(nn.Module):
    """One learned weight beta_f(id) per id of every feature, in TorchRec tables the arch owns.

    The tables sit in an :class:`EmbeddingCollection`, so ``DistributedModelParallel`` shards them with the
    provider's tables and trains them with the same fused table optimizer; but no provider holds them,
    so no search method thresholds, masks or prunes them. FBGEMM's kernels need widths that are multiples
    of 4, so four ids share a row: id i is column ``i % 4`` of row ``i // 4`` (``ceil(N / 4)`` rows, N
    stored weights plus at most 3 of padding per feature). A bag pools its ids' weights by ``pooling``;
    weighted features (value-weighted numerical fields) scale each id's weight by its value.

    Args:
        num_embeddings: ids per feature (``{feature: N}``), in output order.
        pooling: ``sum`` or ``mean`` over a bag (the provider's pooling).

    Call:
        features (KeyedJaggedTensor): holds at least the keys of ``num_embeddings``; batch size B.

    Returns:
        Tensor: [B, F], the pooled weight of each feature's bag, features in ``num_embeddings`` order.

    Example::

        table = LinearTable({"user": 944, "item": 1683})
        beta = table(kjt)  # [B, 2]
    """

    def __init__(self, num_embeddings: Mapping[str, int], pooling: str = "sum") -> None:
        super().__init__()
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        if not num_embeddings:
            raise ValueError("a linear table needs at least one feature")
        self.feature_names: List[str] = list(num_embeddings)
        self.num_embeddings: Dict[str, int] = {f: int(n) for f, n in num_embeddings.items()}
        self.pooling = pooling
        self.tables = [
            EmbeddingConfig(
                name=linear_table_name(f),
                embedding_dim=IDS_PER_ROW,
                num_embeddings=max(1, -(-n // IDS_PER_ROW)),
                feature_names=[f],
            )
            for f, n in self.num_embeddings.items()
        ]
        self.ec = EmbeddingCollection(tables=self.tables)

    def num_params(self) -> int:
        """Stored weights, padding included (``4 * ceil(N / 4)`` per feature)."""
        return sum(t.num_embeddings * t.embedding_dim for t in self.tables)

    def weights(self, tables: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The per-id weights of each feature, from whole tables (e.g. ``full_tables(dmp)``).

        Args:
            tables: ``{table name: [ceil(N / 4), 4]}``.

        Returns:
            ``{feature: [N]}``.
        """
        return {f: tables[linear_table_name(f)].reshape(-1)[:n] for f, n in self.num_embeddings.items()}

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        keys = features.keys()
        missing = [f for f in self.feature_names if f not in keys]
        if missing:
            raise ValueError(f"linear table: features {missing} missing from the batch (got {keys})")
        if keys != self.feature_names:
            features = features.permute([keys.index(f) for f in self.feature_names])
        ids = features.values().long()
        packed = KeyedJaggedTensor(
            keys=self.feature_names,
            values=torch.div(ids, IDS_PER_ROW, rounding_mode="floor"),
            lengths=features.lengths(),
            offsets=features.offsets(),
        )
        rows = self.ec(packed)
        lengths = features.lengths().view(len(self.feature_names), -1)  # [F, B]
        batch = lengths.size(1)
        per_id_weights = features.weights_or_none()
        offsets = features.offsets()
        out = []
        for i, f in enumerate(self.feature_names):
            values = rows[f].values()  # [nnz_f, 4]
            lo, hi = int(offsets[i * batch]), int(offsets[(i + 1) * batch])
            col = torch.remainder(ids[lo:hi], IDS_PER_ROW).unsqueeze(1)
            beta = values.gather(1, col).squeeze(1)  # [nnz_f]
            if per_id_weights is not None:
                beta = beta * per_id_weights[lo:hi].to(beta.dtype)
            bag = torch.repeat_interleave(torch.arange(batch, device=beta.device), lengths[i].long())
            pooled = torch.zeros(batch, dtype=beta.dtype, device=beta.device).index_add(0, bag, beta)
            if self.pooling == "mean":
                pooled = pooled / lengths[i].clamp(min=1).to(pooled.dtype)
            out.append(pooled)
        return torch.stack(out, dim=1)


class FirstOrder(nn.Module):
    """Linear terms: a per-id weight per field plus a linear map of dense features.

    By default the per-id weight of a classic FM / wide model enters as w_f . e_id, with a learned
    vector w_f per field: the embedding carries the per-id bias, the field vector reads it out (an arch
    only sees K-wide embeddings). With ``table`` the weight is the table's own beta_f(id) instead, and the
    embeddings play no part here.

    Args:
        num_fields: F.
        embedding_dim: K.
        num_dense: D (0 for none).
        table: the per-id weights to use instead of w_f . e_id (None: read them from the embeddings).

    Call:
        dense (Tensor): [B, D].
        embeddings (Tensor): [B, F, K].
        features (KeyedJaggedTensor, optional): the batch's ids; needed with ``table``.

    Returns:
        Tensor: [B], sum over fields of w_f . e_f (or beta_f(id)) plus u . dense (no bias).

    Example::

        first = FirstOrder(3, 16, 4)
        y = first(torch.randn(8, 4), torch.randn(8, 3, 16))  # [8]
    """

    def __init__(
        self, num_fields: int, embedding_dim: int, num_dense: int, table: Optional[LinearTable] = None
    ) -> None:
        super().__init__()
        if table is not None and len(table.feature_names) != num_fields:
            raise ValueError(f"linear table has {len(table.feature_names)} features, the arch {num_fields}")
        self.table = table
        self.field_weight = nn.Parameter(torch.zeros(num_fields, embedding_dim)) if table is None else None
        self.num_dense = int(num_dense)
        self.dense_linear = nn.Linear(self.num_dense, 1, bias=False) if self.num_dense > 0 else None

    def per_field(self, embeddings: torch.Tensor, features: Optional[KeyedJaggedTensor] = None) -> torch.Tensor:
        """Per-field linear terms w_f . e_f (or the table's pooled beta_f(id)).

        Args:
            embeddings: [B, F, K].
            features: the batch's ids (used with a table only).

        Returns:
            Tensor: [B, F].
        """
        if self.table is None:
            return (embeddings * self.field_weight).sum(dim=-1)
        if features is None:
            raise ValueError("the first-order term reads its own table (model.linear = 'table'): pass the ids")
        return self.table(features).to(embeddings.dtype)

    def forward(
        self, dense: torch.Tensor, embeddings: torch.Tensor, features: Optional[KeyedJaggedTensor] = None
    ) -> torch.Tensor:
        out = self.per_field(embeddings, features).sum(dim=1)
        if self.dense_linear is not None:
            out = out + self.dense_linear(dense.to(out.dtype)).squeeze(-1)
        return out


class SecondOrder(nn.Module):
    """FM pairwise interactions among the F embeddings and the D dense features.

    Dense feature d enters as its own field vector x_d * v_d, with a learned K-vector v_d.

    Args:
        embedding_dim: K.
        num_dense: D (0 for none).

    Call:
        dense (Tensor): [B, D].
        embeddings (Tensor): [B, F, K].

    Returns:
        Tensor: [B], sum over all pairs i < j of the F + D field vectors of <v_i, v_j>.

    Example::

        second = SecondOrder(16, 4)
        y = second(torch.randn(8, 4), torch.randn(8, 3, 16))  # [8]
    """

    def __init__(self, embedding_dim: int, num_dense: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.num_dense = int(num_dense)
        self.dense_vectors = (
            nn.Parameter(torch.randn(self.num_dense, embedding_dim) * init_std) if self.num_dense > 0 else None
        )

    def field_vectors(self, dense: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """All field vectors: the F embeddings, then x_d * v_d per dense feature.

        Args:
            dense: [B, D].
            embeddings: [B, F, K].

        Returns:
            Tensor: [B, F + D, K].
        """
        if self.dense_vectors is None:
            return embeddings
        d = dense.to(embeddings.dtype).unsqueeze(-1) * self.dense_vectors  # [B, D, K]
        return torch.cat([embeddings, d], dim=1)

    def forward(self, dense: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return fm_second_order(self.field_vectors(dense, embeddings))


class FactorizationMachine(nn.Module):
    """First-order plus second-order FM terms, without the global bias.

    Args:
        num_fields: F.
        embedding_dim: K.
        num_dense: D (0 for none).
        table: per-id first-order weights of its own (:class:`FirstOrder`); None reads them from the
            embeddings.

    Call:
        dense (Tensor): [B, D].
        embeddings (Tensor): [B, F, K].
        features (KeyedJaggedTensor, optional): the batch's ids; needed with ``table``.

    Returns:
        Tensor: [B].

    Example::

        fm = FactorizationMachine(3, 16, 0)
        y = fm(torch.empty(8, 0), torch.randn(8, 3, 16))  # [8]
    """

    def __init__(
        self, num_fields: int, embedding_dim: int, num_dense: int, table: Optional[LinearTable] = None
    ) -> None:
        super().__init__()
        self.first_order = FirstOrder(num_fields, embedding_dim, num_dense, table)
        self.second_order = SecondOrder(embedding_dim, num_dense)

    def forward(
        self, dense: torch.Tensor, embeddings: torch.Tensor, features: Optional[KeyedJaggedTensor] = None
    ) -> torch.Tensor:
        return self.first_order(dense, embeddings, features) + self.second_order(dense, embeddings)


def linear_table_for(
    linear: str, feature_names: Sequence[str], num_embeddings: Optional[Mapping[str, int]], pooling: str
) -> Optional[LinearTable]:
    """The :class:`LinearTable` an arch with ``model.linear = linear`` owns (None for ``embedding``).

    Raises:
        ValueError: an unknown ``linear``, or ``table`` without the ids per feature.

    Example::

        table = linear_table_for("table", ["user", "item"], {"user": 944, "item": 1683}, "sum")
    """
    if linear == "embedding":
        return None
    if linear != "table":
        raise ValueError(f"linear must be 'embedding' or 'table', got {linear!r}")
    if num_embeddings is None:
        raise ValueError("model.linear = 'table' needs the number of ids of every feature")
    absent = [f for f in feature_names if f not in num_embeddings]
    if absent:
        raise ValueError(f"model.linear = 'table': no id count for features {absent}")
    return LinearTable({f: int(num_embeddings[f]) for f in feature_names}, pooling)


class FirstOrderArch(InteractionArch):
    """An arch whose first-order term may read a :class:`LinearTable` of its own (FM, DeepFM, LR).

    With a table the arch reads the batch's ids (:attr:`reads_ids`): :class:`~recdim.models.RecModel`
    passes them as a third argument. ``arch.state_dict()`` called on the arch itself returns the table
    whole, as plain tensors, whether or not it is sharded (one process must hold every piece), so the
    state can be saved as a pruned model's or an artifact's arch and loaded into a sharded or an unsharded
    arch alike; :meth:`load_state_dict` writes a whole table into whatever pieces this process holds.
    Inside a parent's state dict (the sharded checkpoints of the whole model) the table stays sharded.
    """

    @property
    def linear_table(self) -> Optional[LinearTable]:
        """The arch's :class:`LinearTable` (None when the first-order term reads the embeddings)."""
        return next((m for m in self.modules() if isinstance(m, LinearTable)), None)

    @property
    def reads_ids(self) -> bool:  # type: ignore[override]
        return self.linear_table is not None

    def state_dict(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:  # type: ignore[override]
        direct = not args and kwargs.get("destination") is None and not kwargs.get("prefix")
        out = super().state_dict(*args, **kwargs)
        if not direct or self.linear_table is None:
            return out
        for key, value in list(out.items()):
            if TABLE_PARAM.search(key) and isinstance(value, ShardedTensor):
                out[key] = _whole(key, value)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if self.linear_table is None:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        own = super().state_dict(keep_vars=True)
        rest = dict(state_dict)
        for key, target in own.items():
            value = rest.get(key)
            if TABLE_PARAM.search(key) and isinstance(target, ShardedTensor) and isinstance(value, torch.Tensor):
                if tuple(value.shape) != tuple(target.size()):
                    raise RuntimeError(f"{key}: shape {tuple(value.shape)} != {tuple(target.size())}")
                with torch.no_grad():
                    for local, (r0, r1), (c0, c1) in local_pieces(target):
                        local.copy_(value[r0:r1, c0:c1].to(local.device, local.dtype))
                del rest[key]
        result = super().load_state_dict(rest, strict=False, assign=assign)
        handled = set(state_dict) - set(rest)
        missing = [k for k in result.missing_keys if k not in handled]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}: missing keys {missing}, "
                f"unexpected keys {result.unexpected_keys}"
            )
        return type(result)(missing, result.unexpected_keys)


def _whole(key: str, value: ShardedTensor) -> torch.Tensor:
    full = torch.zeros(tuple(value.size()))
    covered = 0
    for local, (r0, r1), (c0, c1) in local_pieces(value):
        full[r0:r1, c0:c1] = local.detach().cpu().float()
        covered += (r1 - r0) * (c1 - c0)
    if covered != full.numel():
        raise RuntimeError(f"{key}: only {covered} of {full.numel()} values are local; read the arch in one process")
    return full


class FMArch(FirstOrderArch):
    """Factorization Machine (Rendle, 2010): bias + sum_f w_f . e_f + u . x + sum_{i<j} <v_i, v_j>.

    The pairwise term runs over the F embeddings and the D dense features (each as x_d * v_d). With
    ``linear = "table"`` the first-order term is sum_f beta_f(id) from the arch's :class:`LinearTable`, so
    a field whose embedding is pruned to 0 dims keeps its linear term (PEP-0, Liu et al., 2021).

    Args:
        feature_names: the F sparse features.
        embedding_dim: K.
        num_dense: D (0 for none).
        init_bias: initial global bias.
        linear: ``embedding`` (w_f . e_f) or ``table`` (``model.linear``).
        num_embeddings: ids per feature (needed with ``table``).
        pooling: bag pooling of the table (the provider's, ``model.pooling``).

    Call:
        dense (Tensor): [B, D].
        embeddings (KeyedTensor): keys ``feature_names``, values [B, F * K].
        features (KeyedJaggedTensor, optional): the batch's ids; needed with ``table``.

    Returns:
        Tensor: [B] logits or ratings.

    Example::

        arch = FMArch(["user", "item", "genre"], 16, 0)
        y = arch(torch.empty(8, 0), kt)  # [8]
        pep0 = FMArch(["user", "item"], 16, 0, linear="table", num_embeddings={"user": 944, "item": 1683})
        y = pep0(torch.empty(8, 0), kt, kjt)  # [8]
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        embedding_dim: int,
        num_dense: int,
        init_bias: float = 0.0,
        linear: str = "embedding",
        num_embeddings: Optional[Mapping[str, int]] = None,
        pooling: str = "sum",
    ) -> None:
        super().__init__(feature_names, embedding_dim, num_dense)
        table = linear_table_for(linear, self.feature_names, num_embeddings, pooling)
        self.fm = FactorizationMachine(len(self.feature_names), self.embedding_dim, self.num_dense, table)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(
        self, dense: torch.Tensor, embeddings: KeyedTensor, features: Optional[KeyedJaggedTensor] = None
    ) -> torch.Tensor:
        e = stack_embeddings(embeddings, self.feature_names)
        return self.bias + self.fm(dense, e, features)
