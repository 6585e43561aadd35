"""Mixed-dimension tier tables behind the provider contract: exact ``W ⊙ mask`` lookups at tier bytes.

Every (feature, tier) table sits in one EmbeddingBagCollection at its own width, so FBGEMM's TBE runs all of
them in one pooled kernel call (and DistributedModelParallel shards them like any tables). A batch goes:

1. remap (:class:`~recdim.modules.remap.TierRemap`): every id to its lookup row, one gather (dense remaps) or
   one search (run remaps) over concatenated per-feature tables;
2. route (:class:`~recdim.modules.tier_router.TierRouter`): one counting sort of the rows into buckets gives
   each tier's local rows and bags — one bag per id, or one per (sample, tier) for the shared-map tiers of
   multi-valued features, which the kernel pools — at a common stride, and each bag's output row;
3. look up: the collection's pooled output ``[S, sum of tier widths]``;
4. scatter (:class:`~recdim.modules.tier_scatter.TierScatter`): every bag's values to its (sample, feature)
   row of the ``[B * F, K]`` output at its column map's columns, as row-block copies where maps are shared
   runs of columns, summing over a bag's tiers and ids when bags hold several ids; padding goes to a sink.
   Mean pooling then divides by the original bag length (dropped ids included).

Both bag kinds are exact for any bag: scatter commutes with pooling when a tier's rows share their map, and a
per-row map scatters each id on its own. Padding slots scatter nowhere, so they get no gradient: pruned
entries stay zero while retraining.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.config import ModelConfig
from recdim.layout.tier_plan import TablePlan, TierPlan
from recdim.layout.tier_routing import TierRouting
from recdim.layout.tier_values import masked_table, tier_values
from recdim.modules.provider import EmbeddingProvider
from recdim.modules.remap import TierRemap
from recdim.modules.tier_router import TierRouter
from recdim.modules.tier_scatter import TierScatter
from recdim.modules.tier_training import KernelTables, kernel_tables, one_pass_train
from recdim.native import native_ops_available


class TieredEmbeddingProvider(EmbeddingProvider):
    """Every feature's pruned table stored as the tiers of its :class:`~recdim.layout.tier_plan.TablePlan`.

    ``provider(kjt)`` equals pooled lookups in the masked K-wide tables ``W ⊙ mask`` for any bags. The
    tier tables are ordinary TorchRec tables (``<table>__tier<j>``, sum pooling) in ``self.ebc``, so
    DistributedModelParallel shards them and the fused kernels train them; remaps, bucket boundaries and
    column maps are small replicated buffers.

    Args:
        plans: one plan per feature, in output order; all with the same K.
        multi_valued: features whose bags usually hold several ids: their shared-map tiers pool in the
            kernel. Any feature may carry bags of any length; this only picks the faster route.
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

        self.routing = TierRouting.build(self.plans, set(multi_valued), self._embedding_dim)
        slot_tiers: List[TierPlan] = [self.plans[s.feature].tiers[s.tier] for s in self.routing.slots]
        self.ebc: Optional[EmbeddingBagCollection] = None
        self._slot_tables = [t.name for t in slot_tiers]
        if slot_tiers:
            self.ebc = EmbeddingBagCollection(
                tables=[t.embedding_bag_config() for t in slot_tiers], is_weighted=is_weighted, device=device
            )
        self.remap = TierRemap(self.plans, self.routing, buf_device)
        self.router = TierRouter(self.routing, [t.feature_name for t in slot_tiers], len(self.plans), buf_device)
        self.scatter = TierScatter(self.routing, buf_device)
        # The scatter holds its own narrow copy of the column maps; the routing's int32 maps are not kept.
        self.routing = dataclasses.replace(self.routing, maps={})
        self._columns: Optional[Tuple[Tuple[str, ...], List[int]]] = None
        self._kernels: Optional[Tuple[nn.Module, Optional[KernelTables]]] = None

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

    def _slot_columns(self, kt: KeyedTensor) -> List[int]:
        """First column of every slot's pooled output in ``kt`` (a sharded collection may order its keys by
        shard)."""
        keys = tuple(kt.keys())
        if self._columns is None or self._columns[0] != keys:
            start, column = {}, 0
            for key, width in zip(keys, kt.length_per_key()):
                start[key] = column
                column += width
            self._columns = (keys, [start[k] for k in self.router.keys])
        return self._columns[1]

    def _kernel_tables(self) -> Optional[KernelTables]:
        """The tier tables of a sharded collection read in place from this one process's fused kernels
        (found again whenever the collection or a kernel's buffers change), or None."""
        cached = self._kernels
        if cached is None or cached[0] is not self.ebc or (cached[1] is not None and not cached[1].is_current()):
            cached = self._kernels = (self.ebc, kernel_tables(self.ebc, self._slot_tables))
        return cached[1]

    def _fused_tables(self, device: torch.device) -> Optional[List[torch.Tensor]]:
        """Every slot's whole tier table in this process, in slot order, when the one-pass no-grad lookup
        (``torch.ops.recdim.tier_lookup``) may serve this call; else None.

        It may when no gradient is wanted (``torch.no_grad()``, :meth:`frozen_tables`, or unsharded tables that
        do not require one), on the CPU with the native kernels, and every tier table is whole here: unsharded,
        or in the fused kernels of DistributedModelParallel with one rank (read in place).
        """
        if self.ebc is None or device.type != "cpu" or not native_ops_available():
            return None
        no_grad = not torch.is_grad_enabled() or self._tables_frozen
        if isinstance(self.ebc, EmbeddingBagCollection):
            tables = [self.ebc.embedding_bags[name].weight for name in self._slot_tables]
            if not no_grad and any(t.requires_grad for t in tables):
                return None
            return [t.detach() for t in tables] if all(t.dtype == torch.float32 for t in tables) else None
        found = self._kernel_tables() if no_grad else None
        return found.weights if found is not None else None

    def _training_tables(self, device: torch.device) -> Optional[KernelTables]:
        """The tier tables of this one process's fused kernels when a training call may take the one-pass
        lookup with its in-place update (:mod:`recdim.modules.tier_training`); else None."""
        if (
            self.ebc is None
            or not torch.is_grad_enabled()
            or self._tables_frozen
            or isinstance(self.ebc, EmbeddingBagCollection)
            or device.type != "cpu"
            or not native_ops_available()
        ):
            return None
        found = self._kernel_tables()
        return found if found is not None and found.optimizer is not None else None

    def one_pass_available(self) -> bool:
        """Whether a no-grad CPU call takes the one-pass lookup here (native kernels built, every tier table
        whole in this process)."""
        with torch.no_grad():
            return self._fused_tables(torch.device("cpu")) is not None

    def one_pass_training_available(self) -> bool:
        """Whether a training call (grad enabled, CPU) takes the one-pass lookup with its in-place update
        (:mod:`recdim.modules.tier_training`) here."""
        with torch.enable_grad():
            return self._training_tables(torch.device("cpu")) is not None

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        names = self._feature_names
        features = self.ordered_features(features)
        B, F, K = features.stride(), len(names), self._embedding_dim
        lengths = features.lengths()
        weights = features.weights_or_none() if self.is_weighted else None
        if self.is_weighted and weights is None:
            raise ValueError("this provider is weighted: the KJT needs per-value weights")
        fused = self._fused_tables(lengths.device)
        training = self._training_tables(lengths.device) if fused is None else None
        if self.ebc is None:
            out = torch.zeros(B, F * K, device=lengths.device)
        elif fused is not None or training is not None:
            remap, router, scatter = self.remap, self.router, self.scatter
            maps = (router.map_base, router.map_stride, scatter.slot_map_base, scatter.flat_maps)
            lookup = (
                features.values(),
                lengths,
                weights,
                remap.features,
                remap.dense,
                remap.run_starts,
                remap.run_deltas,
                remap.run_directory,
                router.boundaries,
                router.slot_of,
                fused if training is None else training.weights,
                *maps,
                B,
                K,
                self.pooling == "mean",
            )
            if training is None:
                out = torch.ops.recdim.tier_lookup(*lookup)
            else:
                out = one_pass_train(training, lookup, maps, self.pooling == "mean")
            return KeyedTensor(keys=names, length_per_key=[K] * F, values=out.view(B, F * K))
        else:
            rows = self.remap(features.values(), features.length_per_key())
            batch = self.router(rows, lengths, weights, B)
            kt = self.ebc(batch.features)
            pooled = self.table_output(kt.values())  # [S, sum of tier widths]
            columns = self._slot_columns(kt)
            out = self.scatter(pooled, batch.rows, batch.map_row, columns, batch.num_rows, batch.max_length > 1)
            out = out.view(B, F * K)
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
