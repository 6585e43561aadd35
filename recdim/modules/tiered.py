"""Mixed-dimension tier tables behind the provider contract: exact ``W ⊙ mask`` lookups at tier bytes.

Lookup of a KJT: remap every id (a per-table buffer) to a tier and a local row, route the ids into one
KJT key per tier, run the fused TorchRec lookups, scatter each tier's d_j values into the K columns by
its column map, and sum over tiers (mean divides by the original bag length, dropped ids included).
Two routes, chosen per tier; both are exact for any bag:

- pooled (shared-map tiers of multi-valued features): the tier sits in the EmbeddingBagCollection and
  its pooled [B, d_j] output is scattered once per bag (scatter commutes with pooling);
- per id (every other tier): the tier sits in an EmbeddingCollection (one per width: TorchRec wants one
  width per EC) and every id's d_j values are scattered by its own map row, then summed per bag.
  Single-valued features take this route for all their tiers: it reads nnz * d_j values, where pooling
  would write a mostly empty [B, d_j] block for every tier.

Padding slots scatter nowhere, so they get no gradient: pruned entries stay zero while retraining.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.config import ModelConfig
from recdim.layout.tier_plan import TablePlan, TierPlan
from recdim.layout.tier_routing import TierRouting
from recdim.layout.tier_values import masked_table, tier_values
from recdim.modules.provider import EmbeddingProvider
from recdim.modules.remap import remap_lookup


def _per_id_collection(tiers: Sequence[TierPlan], width: int, device: Optional[torch.device]) -> EmbeddingCollection:
    """One EmbeddingCollection holding the per-id tiers of one width."""
    return EmbeddingCollection(
        tables=[
            EmbeddingConfig(name=t.name, embedding_dim=width, num_embeddings=t.num_rows, feature_names=[t.feature_name])
            for t in tiers
        ],
        device=device,
    )


class TieredEmbeddingProvider(EmbeddingProvider):
    """Every feature's pruned table stored as the tiers of its :class:`~recdim.layout.tier_plan.TablePlan`.

    ``provider(kjt)`` equals pooled lookups in the masked K-wide tables ``W ⊙ mask`` for any bags. The
    tier tables are ordinary TorchRec tables (``<table>__tier<j>``) in ``self.ebc`` and ``self.ecs``, so
    DistributedModelParallel shards them and the fused kernels train them; remaps and column maps are
    small replicated buffers.

    Args:
        plans: one plan per feature, in output order; all with the same K.
        multi_valued: features whose bags usually hold several ids: their shared-map tiers pool in the
            EBC. Any feature may carry bags of any length; this only picks the faster route.
        pooling: ``"sum"`` or ``"mean"``.
        is_weighted: features carry per-value weights.
        device: where tables are allocated (``meta`` to let DMP materialise them sharded); the buffers
            live on the CPU then.

    Call:
        features (KeyedJaggedTensor): keys ``feature_names``, batch size B.

    Returns:
        KeyedTensor: values [B, F * K], pruned entries zero.

    Example::

        plans = plan_tables({"user": user_mask, "genres": genre_mask}, PlannerConfig(max_tiers=3))
        provider = TieredEmbeddingProvider.from_masked_weights(plans, weights, multi_valued=["genres"])
        kt = provider(kjt)                             # [B, 2 * K]
    """

    def __init__(
        self,
        plans: Sequence[TablePlan],
        multi_valued: Sequence[str] = (),
        pooling: str = "sum",
        is_weighted: bool = False,
        device: Optional[torch.device] = None,
    ) -> None:
        if not plans:
            raise ValueError("a tiered provider needs at least one table plan")
        dims = {p.embedding_dim for p in plans}
        if len(dims) != 1:
            raise ValueError(f"all plans must share one K, got {sorted(dims)}")
        super().__init__([p.feature for p in plans], dims.pop())
        unknown = set(multi_valued) - set(self._feature_names)
        if unknown:
            raise ValueError(f"multi_valued names unknown features: {sorted(unknown)}")
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        self.plans: List[TablePlan] = list(plans)
        self.pooling = pooling
        self.is_weighted = is_weighted
        buf_device = device if device is not None and device.type != "meta" else torch.device("cpu")

        r = TierRouting.build(self.plans, set(multi_valued), self._embedding_dim)
        self._tiers = r.tiers
        self._slot_order: List[int] = r.slot_order  # slot -> global tier
        self._num_ebc_slots = r.num_pooled
        self._segments: List[Tuple[int, int, int]] = r.segments  # (first slot, end slot, width) per EC
        self._ebc_keys = r.keys(r.pooled)
        self._ec_keys = {w: r.keys(r.per_id[w]) for w in r.widths}
        self.ebc: Optional[EmbeddingBagCollection] = None
        if r.pooled:
            self.ebc = EmbeddingBagCollection(
                tables=[r.tiers[g][1].embedding_bag_config() for g in r.pooled], is_weighted=is_weighted, device=device
            )
        self.ecs = nn.ModuleDict(
            {f"w{w}": _per_id_collection([r.tiers[g][1] for g in r.per_id[w]], w, device) for w in r.widths}
        )
        self.remaps = nn.ModuleList([remap_lookup(p.remap, buf_device) for p in self.plans])
        index = {
            "_row_base": r.row_base,
            "_tier_starts": r.tier_starts,
            "_slot_of_tier": r.slot_of_tier,
            "_tier_feature": r.tier_feature,
            "_map_base": r.map_base,
            "_map_stride": r.map_stride,
        }
        for name, values in index.items():
            self.register_buffer(name, torch.tensor(values, dtype=torch.int64, device=buf_device), persistent=False)
        for w, maps in r.maps.items():  # per-id column maps, one buffer per width
            self.register_buffer(f"_maps_w{w}", maps.to(buf_device), persistent=False)
        self._ebc_index: Optional[Tuple[Tuple[str, ...], torch.Tensor]] = None

    @classmethod
    def from_masked_weights(
        cls,
        plans: Sequence[TablePlan],
        weights: Mapping[str, torch.Tensor],
        multi_valued: Sequence[str] = (),
        pooling: str = "sum",
        is_weighted: bool = False,
    ) -> "TieredEmbeddingProvider":
        """An unsharded CPU provider whose tiers hold ``weights[plan.name] ⊙ mask`` ([N, K] each)."""
        provider = cls(plans, multi_valued, pooling, is_weighted, torch.device("cpu"))
        provider.load_masked_weights(weights)
        return provider

    # ----------------------------------------------------------------------------- tier tables

    def tier_parameter(self, name: str) -> nn.Parameter:
        """The (unsharded) weight of tier table ``name``."""
        if self.ebc is not None and name in self.ebc.embedding_bags:
            return self.ebc.embedding_bags[name].weight
        for ec in self.ecs.values():
            if name in ec.embeddings:
                return ec.embeddings[name].weight
        raise KeyError(f"no tier table {name!r}")

    @torch.no_grad()
    def load_tier_values(self, values: Mapping[str, Sequence[torch.Tensor]]) -> None:
        """Copies ``values[table]`` (per tier, [n_j, d_j]) into the unsharded tier tables."""
        for p in self.plans:
            for t, v in zip(p.tiers, values[p.name]):
                self.tier_parameter(t.name).copy_(v)

    def load_masked_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Loads ``weights[table] ⊙ mask`` ([N, K] per table) into the unsharded tier tables."""
        self.load_tier_values({p.name: tier_values(p, weights[p.name]) for p in self.plans})

    @torch.no_grad()
    def tier_weights(self) -> Dict[str, List[torch.Tensor]]:
        """Per table, copies of its tier tables ([n_j, d_j] each; unsharded provider)."""
        return {p.name: [self.tier_parameter(t.name).detach().clone() for t in p.tiers] for p in self.plans}

    def masked_weights(self) -> Dict[str, torch.Tensor]:
        """Per table, the [N, K] masked table the tiers stand for (unsharded provider)."""
        return {p.name: masked_table(p, v) for p, v in zip(self.plans, self.tier_weights().values())}

    def embedding_params(self) -> int:
        """Stored tier values, padding included."""
        return sum(t.num_rows * t.width for p in self.plans for t in p.tiers)

    def embedding_bytes(self) -> int:
        """Tier values (float32) + column maps + remaps, as the planner counted them."""
        return sum(p.bytes().total for p in self.plans)

    # ----------------------------------------------------------------------------- lookup

    def _ebc_layout(self, kt: KeyedTensor) -> torch.Tensor:
        """For the EBC's output key order: the output column of every pooled column in the [B, F * (K + 1)]
        buffer (feature f's sink column ``f * (K + 1) + K`` takes padding slots)."""
        keys = tuple(kt.keys())
        if self._ebc_index is None or self._ebc_index[0] != keys:
            widths = kt.length_per_key()
            start = dict(zip(keys, [sum(widths[:i]) for i in range(len(keys))]))
            K1 = self._embedding_dim + 1
            dst = [0] * sum(widths)
            for g in self._slot_order[: self._num_ebc_slots]:
                fi, t, _ = self._tiers[g]
                for s, c in enumerate(t.column_map.tolist()):
                    dst[start[t.feature_name] + s] = fi * K1 + (c if c >= 0 else K1 - 1)
            self._ebc_index = (keys, torch.tensor(dst, dtype=torch.int64, device=self._row_base.device))
        return self._ebc_index[1]

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        names = self._feature_names
        features = self.ordered_features(features)
        B, F, K = features.stride(), len(names), self._embedding_dim
        ids = features.values().to(torch.int64)
        lengths = features.lengths()
        weights = features.weights_or_none() if self.is_weighted else None
        if self.is_weighted and weights is None:
            raise ValueError("this provider is weighted: the KJT needs per-value weights")

        # Remap, then route the kept ids: sorted by (slot, sample), one KJT key per tier.
        offs = features.offset_per_key()
        rows = torch.cat([self.remaps[f](ids[offs[f] : offs[f + 1]]) for f in range(F)])
        seg = torch.repeat_interleave(
            torch.arange(F * B, device=ids.device), lengths.to(torch.int64), output_size=ids.numel()
        )
        feat = torch.repeat_interleave(
            torch.arange(F, device=ids.device),
            torch.tensor(features.length_per_key(), device=ids.device),
            output_size=ids.numel(),
        )
        kept = torch.nonzero(rows >= 0).squeeze(1)
        seg, feat = seg.index_select(0, kept), feat.index_select(0, kept)  # seg = feature * B + sample
        grow = rows.index_select(0, kept) + self._row_base.index_select(0, feat)
        tier = torch.searchsorted(self._tier_starts, grow, right=True) - 1
        key = self._slot_of_tier.index_select(0, tier) * B + (seg - feat * B)
        key, order = torch.sort(key, stable=True)
        tier, pos, seg = tier.index_select(0, order), kept.index_select(0, order), seg.index_select(0, order)
        local = grow.index_select(0, order) - self._tier_starts.index_select(0, tier)
        counts = torch.bincount(key, minlength=len(self._slot_order) * B)
        ends = [0] + counts.view(-1, B).sum(dim=1).cumsum(0).tolist() if self._slot_order else [0]

        # Per id: each id's d values spread to K + 1 columns by its map row (column K is a sink for
        # padding slots), added to its (feature, sample) row of ``per_id``.
        per_id = torch.zeros(F * B, K + 1, device=ids.device)
        for (lo, hi, w), ec in zip(self._segments, self.ecs.values()):
            a, b = ends[lo], ends[hi]
            jts = ec(
                KeyedJaggedTensor(
                    keys=self._ec_keys[w],
                    values=local[a:b],
                    lengths=counts[lo * B : hi * B].to(lengths.dtype),
                    stride=B,
                )
            )
            v = torch.cat([self.table_output(jts[k].values()) for k in self._ec_keys[w]])  # [b - a, w]
            if weights is not None:
                v = v * weights.index_select(0, pos[a:b]).unsqueeze(1).to(v.dtype)
            trs = tier[a:b]
            map_rows = self._map_base.index_select(0, trs) + local[a:b] * self._map_stride.index_select(0, trs)
            maps = getattr(self, f"_maps_w{w}").index_select(0, map_rows).to(torch.int64)
            spread = torch.zeros(b - a, K + 1, dtype=v.dtype, device=v.device).scatter_(1, maps, v)
            per_id = per_id.to(v.dtype)
            per_id.index_add_(0, seg[a:b], spread)
        out = per_id.view(F, B, K + 1).transpose(0, 1)  # [B, F, K + 1]

        # Pooled: shared-map tiers scattered once per bag into [B, F * (K + 1)].
        if self.ebc is not None:
            n = ends[self._num_ebc_slots]
            kt = self.ebc(
                KeyedJaggedTensor(
                    keys=self._ebc_keys,
                    values=local[:n],
                    lengths=counts[: self._num_ebc_slots * B].to(lengths.dtype),
                    weights=weights.index_select(0, pos[:n]) if weights is not None else None,
                    stride=B,
                )
            )
            pooled = self.table_output(kt.values())  # [B, sum of pooled tier widths]
            bags = torch.zeros(B, F * (K + 1), dtype=pooled.dtype, device=pooled.device)
            out = out.to(pooled.dtype) + bags.index_add_(1, self._ebc_layout(kt), pooled).view(B, F, K + 1)
        out = out[:, :, :K].reshape(B, F * K)
        if self.pooling == "mean":
            out = (out.view(B, F, K) / lengths.view(F, B).t().clamp(min=1).unsqueeze(-1).to(out.dtype)).reshape(
                B, F * K
            )
        return KeyedTensor(keys=names, length_per_key=[K] * F, values=out)


def tiered_provider_factory(
    plans: Sequence[TablePlan], multi_valued: Sequence[str] = ()
) -> Callable[[ModelConfig, Dict[str, int], bool, torch.device], EmbeddingProvider]:
    """A ``ProviderFactory`` (see :mod:`recdim.train.build`) building a :class:`TieredEmbeddingProvider`.

    Args:
        plans: one plan per feature the model uses (matched by feature name).
        multi_valued: features whose shared-map tiers should pool in the EBC.

    Returns:
        ``factory(model_cfg, num_embeddings, weighted, device) -> provider``; it checks that every plan
        matches the model's row counts and K.

    Example::

        session = open_session(cfg, tiered_provider_factory(plans, multi_valued=["genres"]))
        write_tier_tables(session.dmp, plans, initial_weights)    # or init_tables(..., masked_init(plans))
    """

    def factory(
        cfg: ModelConfig, num_embeddings: Dict[str, int], weighted: bool, device: torch.device
    ) -> EmbeddingProvider:
        by_feature = {p.feature: p for p in plans}
        missing = [f for f in num_embeddings if f not in by_feature]
        if missing:
            raise ValueError(f"no table plan for features {missing}")
        chosen = [by_feature[f] for f in num_embeddings]
        for p in chosen:
            if p.num_embeddings != num_embeddings[p.feature] or p.embedding_dim != cfg.embedding_dim:
                raise ValueError(
                    f"plan {p.name} is [{p.num_embeddings}, {p.embedding_dim}], the model wants "
                    f"[{num_embeddings[p.feature]}, {cfg.embedding_dim}]"
                )
        multi = [f for f in multi_valued if f in num_embeddings]
        return TieredEmbeddingProvider(chosen, multi, cfg.pooling, weighted, device)

    return factory
