"""Training tier tables in one pass: the one-pass lookup forward, and a backward that updates the tables in place.

With every tier table in one process's fused FBGEMM kernels (DistributedModelParallel with one rank), a training
step need not route ids through the collection: the forward reads the tier rows straight into ``[B * F, K]``
(``torch.ops.recdim.tier_lookup_keys``), and the backward (``torch.ops.recdim.tier_update``) sums each table row's
gradient over its ids and applies the collection's own optimizer to the kernel's weights and optimizer state,
in place — what the fused kernel's backward does, without the routed batch, the pooled intermediate or the
scatter. The kernels' storage, state dicts, checkpoints and learning-rate schedules are TorchRec's throughout.

Supported optimizers are those whose update is exact per row and reproduced here: ``EXACT_SGD`` and
``EXACT_ROWWISE_ADAGRAD``, without weight decay. Anything else (other optimizers, several ranks, tables not
whole here) keeps the routed path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

SGD, ROWWISE_ADAGRAD = 0, 1


@dataclass
class FusedTierTables:
    """The tier tables of one process's fused kernels, in slot order, for :func:`one_pass_train`.

    Args:
        weights: [n_k, w_k] float32 views of each slot's table in its kernel.
        momenta: [n_k] row-wise Adagrad state of each slot (empty for SGD).
        optimizer: :data:`SGD` or :data:`ROWWISE_ADAGRAD`.
        eps: the Adagrad epsilon.
        kernels: the kernel of each slot (its learning rate is read every step).
    """

    weights: List[torch.Tensor]
    momenta: List[torch.Tensor]
    optimizer: int
    eps: float
    kernels: List[nn.Module]

    def is_current(self) -> bool:
        """Whether the views still look at the kernels' storage (a kernel whose buffers were replaced, e.g.
        by loading a state that reallocates them, needs the tables found again)."""
        return self._storage() == self.storage

    def _storage(self) -> List[int]:
        return kernel_storage(self.kernels)

    def __post_init__(self) -> None:
        self.storage = self._storage()

    def learning_rates(self) -> torch.Tensor:
        """[T] float64 current learning rate of each slot's kernel."""
        rate: Dict[int, float] = {}
        for k in self.kernels:
            if id(k) not in rate:
                rate[id(k)] = float(k.get_learning_rate())
        return torch.tensor([rate[id(k)] for k in self.kernels], dtype=torch.float64)


_BUFFERS = ("weights_host", "weights_dev", "weights_uvm", "momentum1_host", "momentum1_dev")


def kernel_storage(kernels: Sequence[nn.Module]) -> List[int]:
    """Addresses of the weight and optimizer-state buffers of FBGEMM kernels: views into them stay valid while
    these are unchanged."""
    seen: Dict[int, List[int]] = {}
    for k in kernels:
        if id(k) not in seen:
            seen[id(k)] = [
                getattr(k, name).data_ptr() for name in _BUFFERS if isinstance(getattr(k, name, None), torch.Tensor)
            ]
    return [p for ptrs in seen.values() for p in ptrs]


def collection_kernels(ebc: nn.Module) -> List[nn.Module]:
    """The FBGEMM kernels of a sharded collection's lookups in this process."""
    return [
        m._emb_module
        for lookup in getattr(ebc, "_lookups", [])
        for m in getattr(lookup, "_emb_modules", [])
        if hasattr(m, "_emb_module")
    ]


def fused_tier_tables(ebc: nn.Module, names: Sequence[str]) -> Optional[FusedTierTables]:
    """The tables ``names`` of a sharded collection whose fused kernels hold them whole in this one process,
    or None where a one-pass training step cannot update them exactly.

    Args:
        ebc: a ShardedEmbeddingBagCollection.
        names: table names in slot order.

    Example::

        fused = fused_tier_tables(dmp.module.provider.ebc, ["t_user__tier0", "t_user__tier1"])
    """
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return None
    found: Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor], nn.Module]] = {}
    kinds = set()
    eps = set()
    for lookup in getattr(ebc, "_lookups", []):
        for module in getattr(lookup, "_emb_modules", []):
            kernel = getattr(module, "_emb_module", None)
            config = getattr(module, "config", None)
            if kernel is None or config is None or not hasattr(kernel, "split_embedding_weights"):
                return None
            optimizer = getattr(kernel, "optimizer", None)
            if optimizer not in (EmbOptimType.EXACT_SGD, EmbOptimType.EXACT_ROWWISE_ADAGRAD):
                return None
            args = kernel.optimizer_args
            if float(getattr(args, "weight_decay", 0.0)) != 0.0:
                return None
            kinds.add(optimizer)
            eps.add(float(getattr(args, "eps", 0.0)))
            weights = kernel.split_embedding_weights()
            states = kernel.split_optimizer_states() if optimizer == EmbOptimType.EXACT_ROWWISE_ADAGRAD else None
            tables = config.embedding_tables
            if len(weights) != len(tables):
                return None
            for j, (table, w) in enumerate(zip(tables, weights)):
                if (
                    w.dtype != torch.float32
                    or w.device.type != "cpu"
                    or tuple(w.shape)
                    != (
                        table.num_embeddings,
                        table.embedding_dim,
                    )
                ):
                    return None
                momentum = None
                if states is not None:
                    momentum = states[j][0]
                    if momentum.numel() != w.size(0) or momentum.dtype != torch.float32:
                        return None
                found[table.name] = (w, momentum, kernel)
    if len(kinds) != 1 or len(eps) > 1 or any(n not in found for n in names):
        return None
    kind = kinds.pop()
    rowwise = kind == EmbOptimType.EXACT_ROWWISE_ADAGRAD
    return FusedTierTables(
        weights=[found[n][0] for n in names],
        momenta=[found[n][1] for n in names] if rowwise else [],  # type: ignore[misc]
        optimizer=ROWWISE_ADAGRAD if rowwise else SGD,
        eps=eps.pop() if eps else 0.0,
        kernels=[found[n][2] for n in names],
    )


class _OnePass(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, anchor: torch.Tensor, fused: FusedTierTables, lookup: Tuple[Any, ...], mean: bool
    ) -> torch.Tensor:
        out, keys, out_offsets, key_weights, row_offset = torch.ops.recdim.tier_lookup_keys(*lookup)
        ctx.fused, ctx.mean = fused, mean
        ctx.keys, ctx.out_offsets, ctx.key_weights, ctx.row_offset = keys, out_offsets, key_weights, row_offset
        ctx.maps = lookup[11:15]  # map_base, map_stride, slot_map_base, maps
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        fused: FusedTierTables = ctx.fused
        torch.ops.recdim.tier_update(
            grad.contiguous(),
            ctx.keys,
            ctx.out_offsets,
            ctx.key_weights,
            ctx.mean,
            fused.weights,
            fused.momenta,
            ctx.row_offset,
            fused.learning_rates(),
            fused.eps,
            fused.optimizer,
            *ctx.maps,
        )
        return None, None, None, None


_ANCHOR = torch.zeros(0, requires_grad=True)


def one_pass_train(fused: FusedTierTables, lookup: Tuple[Any, ...], mean: bool) -> torch.Tensor:
    """``[B * F, K]`` tier lookup whose backward updates ``fused``'s tables in place (see the module docstring).

    Args:
        fused: the tables, as :func:`fused_tier_tables` found them.
        lookup: the arguments of ``torch.ops.recdim.tier_lookup`` (ids ... mean), ``fused.weights`` as tables.
        mean: mean pooling (the bag length divides each id's gradient).

    Returns:
        Tensor: [B * F, K], requiring grad; its backward returns no gradient to anything else.
    """
    return _OnePass.apply(_ANCHOR, fused, lookup, mean)
