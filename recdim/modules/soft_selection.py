"""DNIS / AutoSrh soft selection: every id's K-wide embedding is scaled by the alpha row of its frequency
block before pooling, ``e_i ⊙ alpha[block(i)]``.

The provider composes, per feature, one of the exact ways of applying alpha in
:mod:`recdim.modules.selection_paths` (per-id scaling for single-valued features; block splitting or
per-id rows from an EmbeddingCollection for bags), so every lookup runs in a TorchRec module that DMP
shards and the fused kernels serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

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
    zeros), as TorchRec does.

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
        L, K = plan.num_blocks, embedding_dim
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

        # Global id (feature offset + id) -> virtual (feature, block) by one searchsorted over block starts.
        for name, values in (
            ("_feature_offsets", r.feature_offsets),
            ("_block_starts", r.block_starts),
            ("_slot_of_block", r.slot_of_block),
            ("_row_of_block", r.row_of_block),
        ):
            self.register_buffer(name, torch.tensor(values, dtype=torch.int64), persistent=False)
        # Groups: (path, feature indices, EBC slots); output order restored by self._inverse.
        self._groups: List[Tuple[SelectionPath, List[int], List[int]]] = r.groups
        self._inverse = r.inverse
        self._kt_index: Optional[Tuple[Tuple[str, ...], Optional[List[int]]]] = None

    def arch_parameters(self) -> List[nn.Parameter]:
        return [self.alpha]

    def _virtual_blocks(self, kjt: KeyedJaggedTensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per value: its (feature * B + sample) segment and its virtual (feature * L + block) index."""
        values, lengths = kjt.values(), kjt.lengths()
        B, F = kjt.stride(), len(self._feature_names)
        seg = torch.repeat_interleave(
            torch.arange(F * B, device=values.device), lengths.to(torch.int64), output_size=values.numel()
        )
        gid = self._feature_offsets.to(values.device)[torch.div(seg, B, rounding_mode="floor")] + values.to(torch.int64)
        vb = torch.searchsorted(self._block_starts.to(values.device), gid, right=True) - 1
        return seg, vb

    def _route(self, kjt: KeyedJaggedTensor, seg: torch.Tensor, vb: torch.Tensor) -> _Routed:
        """Split features' ids moved to their block's key; EC features' ids to the EC's KJT."""
        if not self._needs_routing:
            return _Routed(kjt)
        B, E = kjt.stride(), len(self._ebc_keys)
        key = self._slot_of_block.to(vb.device)[vb] * B + torch.remainder(seg, B)
        key, order = torch.sort(key, stable=True)
        lengths = torch.bincount(key, minlength=(E + len(self._seq_features)) * B).to(kjt.lengths().dtype)
        values = kjt.values()[order]
        weights = kjt.weights_or_none()
        weights = None if weights is None else weights[order]
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
        rows = self._row_of_block.to(vb.device)[vb][order][n:]
        return _Routed(ebc, ec, rows, key[n:] - E * B, None if weights is None else weights[n:])

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
        B, F, K, L = features.stride(), len(names), self._embedding_dim, self.plan.num_blocks
        seg, vb = self._virtual_blocks(features)
        lengths = features.lengths().view(F, B)
        routed = self._route(features, seg, vb)
        pooled = self._slots(self.ebc(routed.ebc), B) if self.ebc is not None and routed.ebc is not None else None
        seq = None
        if self.ec is not None and routed.ec is not None:
            out_ec = self.ec(routed.ec)
            seq = self.table_output(torch.cat([out_ec[f].values() for f in self._seq_features]))
        row_of_block = self._row_of_block.to(vb.device)
        outs = []
        for path, idx, slots in self._groups:
            idx_t = torch.tensor(idx, device=vb.device)
            inp = GroupInput(batch_size=B, alpha=self.alpha, block_rows=row_of_block.view(F, L)[idx_t])
            if path.pooled and pooled is not None:
                contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
                group = pooled[:, slots[0] : slots[0] + len(slots)] if contiguous else pooled[:, slots]
                inp.pooled = group.reshape(B, len(idx), -1, K)
            if path.per_sample_rows:
                torch._assert_async((lengths[idx_t] <= 1).all(), "a single-valued feature got a bag of several ids")
                rows = torch.zeros(F * B, dtype=torch.int64, device=vb.device)
                rows[seg] = row_of_block[vb]
                inp.sample_rows = rows.view(F, B)[idx_t].t()
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
