"""DNIS / AutoSrh soft selection: every id's K-wide embedding is scaled by the alpha row of its frequency
block before pooling, ``e_i ⊙ alpha[block(i)]``.

The provider composes, per feature, one of the exact ways of applying alpha in
:mod:`recdim.modules.selection_paths` (per-id scaling for single-valued features; block splitting or
per-id rows from an EmbeddingCollection for bags), so every lookup runs in a TorchRec module that DMP
shards and the fused kernels serve.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.layout.blocks import BlockPlan
from recdim.layout.selection_routing import SelectionRouting
from recdim.modules.provider import EmbeddingProvider
from recdim.modules.selection_paths import (  # noqa: F401  (re-exported)
    BlockSplitPooling,
    GroupInput,
    PerIdScaling,
    SelectionPath,
    SequenceScaling,
)
from recdim.modules.uniform import table_name


@dataclass
class _Routed:
    """The lookups' inputs: the EBC's KJT (pooled keys) and the EC's KJT with, per EC id, its alpha row,
    its ``g * B + sample`` segment and its weight."""

    ebc: Optional[KeyedJaggedTensor]
    ec: Optional[KeyedJaggedTensor] = None
    ec_rows: Optional[torch.Tensor] = None
    ec_segments: Optional[torch.Tensor] = None
    ec_weights: Optional[torch.Tensor] = None


class SoftSelectionProvider(EmbeddingProvider):
    """K-wide TorchRec tables whose ids are scaled by soft-selection weights alpha ∈ [0, 1]^(R × K).

    Feature f's table is ``t_<f>`` (as in the uniform provider), in ``self.ebc`` (EmbeddingBagCollection)
    or, for features on a non-pooled path, in ``self.ec`` (EmbeddingCollection). R = L for global blocking,
    F * L per table (see :class:`~recdim.layout.blocks.BlockPlan`). Alpha starts at ones, is returned by
    :meth:`arch_parameters` and is trained by the search driver only. Features missing from ``paths`` take
    :class:`~recdim.modules.selection_paths.PerIdScaling`, so they must never carry more than one id per
    bag (checked). ``mean`` pooling divides the scaled sum by the whole bag's length (an empty bag gives
    zeros), as TorchRec does. Every id finds its alpha row in one lookup of an int32 id -> row table built
    from the plan (4 bytes per table row, a non-persistent buffer); ids must lie inside their tables.

    Args:
        num_embeddings: rows per feature (``{feature: n}``), in output order; must match ``plan``.
        embedding_dim: K.
        plan: the frequency blocks (its features in the same order).
        paths: the selection path of each multi-valued feature (``BlockSplitPooling()`` or
            ``SequenceScaling()``); the others are single-valued.
        pooling: ``"sum"`` or ``"mean"``.
        is_weighted: features carry per-value weights.
        device: where tables are allocated (``meta`` to let DMP materialise them sharded); alpha lives on
            the CPU then, and DMP moves it with the dense parameters.

    Call:
        features (KeyedJaggedTensor): keys ``feature_names``, batch size B.

    Returns:
        KeyedTensor: values [B, F * K].

    Example::

        plan = per_table_blocks({"user": 944, "genres": 20}, num_blocks=4)
        provider = SoftSelectionProvider({"user": 944, "genres": 20}, 16, plan, {"genres": SequenceScaling()})
        kt = provider(kjt)                      # [B, 2 * 16]; alpha: provider.alpha, [8, 16]
    """

    def __init__(
        self,
        num_embeddings: Dict[str, int],
        embedding_dim: int,
        plan: BlockPlan,
        paths: Optional[Mapping[str, SelectionPath]] = None,
        pooling: str = "sum",
        is_weighted: bool = False,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(list(num_embeddings), embedding_dim)
        features = list(num_embeddings)
        if list(plan.features) != features:
            raise ValueError(f"block plan features {list(plan.features)} != provider features {features}")
        for f, n in num_embeddings.items():
            if plan.num_embeddings(f) != int(n):
                raise ValueError(f"block plan has {plan.num_embeddings(f)} ids for {f!r}, the table {n}")
        paths = dict(paths or {})
        unknown = set(paths) - set(features)
        if unknown:
            raise ValueError(f"paths name unknown features: {sorted(unknown)}")
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        self.plan = plan
        self.pooling = pooling
        F, L, K = len(features), plan.num_blocks, embedding_dim
        # One instance per path type, so that features on the same path form one group.
        kinds: Dict[type, SelectionPath] = {PerIdScaling: PerIdScaling()}
        for p in paths.values():
            kinds.setdefault(type(p), p)
        self.paths: Dict[str, SelectionPath] = {f: kinds[type(paths.get(f, kinds[PerIdScaling]))] for f in features}
        if len({type(p) for p in self.paths.values() if not p.pooled}) > 1:
            raise ValueError("at most one non-pooled selection path type per provider")

        # EBC keys first (pooled paths, feature order), then EC keys: the slots of the routed KJT.
        r = SelectionRouting.build(plan, self.paths)
        pooled_f, seq_f = r.pooled_features, r.seq_features
        self._ebc_keys: List[str] = r.ebc_keys
        self._seq_features = seq_f

        self.tables: List[EmbeddingBagConfig] = [
            EmbeddingBagConfig(
                name=table_name(f),
                embedding_dim=K,
                num_embeddings=int(num_embeddings[f]),
                feature_names=self.paths[f].keys(f, L),
                pooling=PoolingType.SUM,
            )
            for f in pooled_f
        ]
        self.seq_tables: List[EmbeddingConfig] = [
            EmbeddingConfig(
                name=table_name(f), embedding_dim=K, num_embeddings=int(num_embeddings[f]), feature_names=[f]
            )
            for f in seq_f
        ]
        self.ebc = (
            EmbeddingBagCollection(tables=self.tables, is_weighted=is_weighted, device=device) if pooled_f else None
        )
        self.ec = EmbeddingCollection(tables=self.seq_tables, device=device) if seq_f else None
        self._needs_routing = bool(seq_f) or self._ebc_keys != pooled_f

        alpha_device = device if device is not None and device.type != "meta" else torch.device("cpu")
        self.alpha = nn.Parameter(torch.ones(plan.num_alpha_rows, K, device=alpha_device))

        # Global id (feature offset + id) -> alpha row by one lookup in an int32 table (built once from the
        # plan); routing recovers the block as row - the feature's first alpha row.
        sizes = [hi - lo for bounds in plan.boundaries for lo, hi in zip(bounds, bounds[1:])]
        row_of_id = torch.repeat_interleave(torch.tensor(r.row_of_block, dtype=torch.int32), torch.tensor(sizes))
        self.register_buffer("_row_of_id", row_of_id, persistent=False)
        first_rows = [plan.alpha_row_offset(f) for f in features]
        self.register_buffer("_first_row", torch.tensor(first_rows, dtype=torch.int64), persistent=False)
        for name, values in (
            ("_feature_offsets", r.feature_offsets),
            ("_slot_of_block", r.slot_of_block),
        ):
            self.register_buffer(name, torch.tensor(values, dtype=torch.int64), persistent=False)
        # Groups: (path, feature indices, EBC slots); output order restored by self._inverse. Per group, its
        # feature indices and the alpha row of each of its (feature, block) as buffers.
        self._groups: List[Tuple[SelectionPath, List[int], List[int]]] = r.groups
        row_of_block = torch.tensor(r.row_of_block, dtype=torch.int64).view(F, L)
        offsets = torch.tensor(r.feature_offsets, dtype=torch.int64)
        self._group_slots: List[Optional[Any]] = []  # EBC slots of a pooled group: a slice when contiguous
        for i, (_, idx, slots) in enumerate(self._groups):
            idx_t = torch.tensor(idx, dtype=torch.int64)
            self.register_buffer(f"_group{i}_features", idx_t, persistent=False)
            self.register_buffer(f"_group{i}_block_rows", row_of_block[idx_t].contiguous(), persistent=False)
            self.register_buffer(f"_group{i}_offsets", offsets[idx_t].unsqueeze(1), persistent=False)
            contiguous = bool(slots) and slots == list(range(slots[0], slots[0] + len(slots)))
            self._group_slots.append(slice(slots[0], slots[0] + len(slots)) if contiguous else slots or None)
        self._inverse = r.inverse
        self._kt_index: Optional[Tuple[Tuple[str, ...], Optional[List[int]]]] = None

    def arch_parameters(self) -> List[nn.Parameter]:
        return [self.alpha]

    def _group_buffers(self, i: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Group i's feature indices ([G]), the alpha rows of its (feature, block) ([G, L]) and its
        features' first global ids ([G, 1])."""
        return tuple(getattr(self, f"_group{i}_{name}") for name in ("features", "block_rows", "offsets"))

    def _rows_of(self, ids: torch.Tensor, feature_offsets: torch.Tensor) -> torch.Tensor:
        """Alpha row (int64) of ids whose features' first global ids are ``feature_offsets`` (broadcast)."""
        gid = ids.to(torch.int64) + feature_offsets
        return self._row_of_id.index_select(0, gid.reshape(-1)).to(torch.int64).view(gid.shape)

    def _sample_rows(
        self, kjt: KeyedJaggedTensor, feat_idx: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """[B, G] alpha row of each sample's id for a group of single-valued features (``feat_idx``, their
        first global ids ``offsets`` [G, 1] and bag lengths ``lengths`` [G, B], each 0 or 1). An empty bag
        reads id 0: its pooled row is zero, so any row leaves output and gradients exact."""
        values = kjt.values()
        F, B, G = len(self._feature_names), kjt.stride(), feat_idx.numel()
        if values.numel() == F * B and G == F:
            ids = values.view(F, B)  # every bag holds at most one id, so each holds exactly one
        elif values.numel() == 0:
            ids = torch.zeros(G, B, dtype=torch.int64, device=values.device)
        else:
            first = kjt.offsets()[:-1].view(F, B).index_select(0, feat_idx).reshape(-1)
            ids = values.index_select(0, first.clamp(max=values.numel() - 1)).view(G, B)
            ids = torch.where(lengths > 0, ids, torch.zeros_like(ids))
        return self._rows_of(ids, offsets).t()

    def _route(self, kjt: KeyedJaggedTensor) -> _Routed:
        """Split features' ids moved to their block's key; EC features' ids to the EC's KJT."""
        if not self._needs_routing:
            return _Routed(kjt)
        values, B, E = kjt.values(), kjt.stride(), len(self._ebc_keys)
        F = len(self._feature_names)
        seg = torch.repeat_interleave(
            torch.arange(F * B, device=values.device), kjt.lengths().to(torch.int64), output_size=values.numel()
        )
        feature = torch.div(seg, B, rounding_mode="floor")
        rows = self._rows_of(values, self._feature_offsets.index_select(0, feature))
        blocks = feature * self.plan.num_blocks + rows - self._first_row.index_select(0, feature)  # f * L + b
        key = self._slot_of_block.index_select(0, blocks) * B + torch.remainder(seg, B)
        key, order = torch.sort(key, stable=True)
        lengths = torch.bincount(key, minlength=(E + len(self._seq_features)) * B).to(kjt.lengths().dtype)
        values = values.index_select(0, order)
        weights = kjt.weights_or_none()
        weights = None if weights is None else weights.index_select(0, order)
        n = int(lengths[: E * B].sum()) if self._seq_features else values.numel()
        ebc = None
        if E:
            ebc = KeyedJaggedTensor(
                keys=self._ebc_keys,
                values=values[:n],
                weights=None if weights is None else weights[:n],
                lengths=lengths[: E * B],
                stride=B,
            )
        if not self._seq_features:
            return _Routed(ebc)
        ec = KeyedJaggedTensor(keys=self._seq_features, values=values[n:], lengths=lengths[E * B :], stride=B)
        return _Routed(
            ebc, ec, rows.index_select(0, order[n:]), key[n:] - E * B, None if weights is None else weights[n:]
        )

    def _slots(self, kt: KeyedTensor, B: int) -> torch.Tensor:
        """[B, S, K] pooled rows in EBC key order, whatever order the (sharded) EBC returns."""
        keys = tuple(kt.keys())
        if self._kt_index is None or self._kt_index[0] != keys:
            perm = None if list(keys) == self._ebc_keys else [keys.index(k) for k in self._ebc_keys]
            self._kt_index = (keys, perm)
        pooled = self.table_output(kt.values()).view(B, len(keys), self._embedding_dim)
        perm = self._kt_index[1]
        return pooled if perm is None else pooled[:, perm]

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        names = self._feature_names
        features = self.ordered_features(features)
        B, F, K = features.stride(), len(names), self._embedding_dim
        lengths = features.lengths().view(F, B)
        routed = self._route(features)
        # Frozen tables: the lookups run without autograd (nothing may flow back into them).
        with torch.no_grad() if self._tables_frozen else contextlib.nullcontext():
            kt = self.ebc(routed.ebc) if self.ebc is not None and routed.ebc is not None else None
            out_ec = self.ec(routed.ec) if self.ec is not None and routed.ec is not None else None
        pooled = self._slots(kt, B) if kt is not None else None
        seq = None
        if out_ec is not None:
            seq = self.table_output(torch.cat([out_ec[f].values() for f in self._seq_features]))
        outs = []
        for i, (path, idx, _) in enumerate(self._groups):
            feat_idx, block_rows, offsets = self._group_buffers(i)
            inp = GroupInput(batch_size=B, alpha=self.alpha, block_rows=block_rows)
            slots = self._group_slots[i]
            if path.pooled and pooled is not None and slots is not None:
                group = pooled if slots == slice(0, pooled.size(1)) else pooled[:, slots]
                inp.pooled = group.reshape(B, len(idx), -1, K)
            if path.per_sample_rows:
                group_lengths = lengths if len(idx) == F else lengths.index_select(0, feat_idx)
                if group_lengths.numel():
                    torch._assert_async(group_lengths.max() <= 1, "a single-valued feature got a bag of several ids")
                inp.sample_rows = self._sample_rows(features, feat_idx, offsets, group_lengths)
            if not path.pooled:
                inp.values, inp.value_rows = seq, routed.ec_rows
                inp.value_segments, inp.value_weights = routed.ec_segments, routed.ec_weights
            outs.append(path.combine(inp))
        out = torch.cat(outs, dim=1)[:, self._inverse] if len(outs) > 1 else outs[0]
        if self.pooling == "mean":
            out = out / lengths.t().clamp(min=1).unsqueeze(-1).to(out.dtype)
        return KeyedTensor(keys=names, length_per_key=[K] * F, values=out.reshape(B, F * K))

    def effective_weights(self, tables: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``e_i ⊙ alpha[block(i)]`` for every id of every feature (what the arch sees per id)."""
        alpha = self.alpha.detach().cpu().float()
        out: Dict[str, torch.Tensor] = {}
        for f in self.feature_names:
            w = tables[table_name(f)]
            rows = self.plan.alpha_row_offset(f) + self.plan.block_of(f, torch.arange(w.size(0)))
            out[f] = w * alpha[rows]
        return out

    def embedding_params(self) -> int:
        """Stored table values (N * K over all tables); alpha is counted in :meth:`embedding_bytes` only."""
        return sum(t.num_embeddings * t.embedding_dim for t in [*self.tables, *self.seq_tables])

    def embedding_bytes(self) -> int:
        """Table values (float32) + alpha (float32) + block boundaries (int64, F * (L + 1))."""
        bounds = 8 * len(self.plan.features) * (self.plan.num_blocks + 1)
        return 4 * self.embedding_params() + 4 * self.alpha.numel() + bounds
