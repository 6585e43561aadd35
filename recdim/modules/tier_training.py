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

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

SGD, ROWWISE_ADAGRAD = 0, 1


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


@dataclass
class KernelTables:
    """Tier tables read in place from one process's fused FBGEMM kernels, in slot order.

    Args:
        weights: [n_k, w_k] float32 views of each slot's table in its kernel.
        kernels: the kernel of each slot.
        momenta: [n_k] row-wise Adagrad state of each slot (empty unless the kernels run row-wise Adagrad).
        optimizer: :data:`SGD` or :data:`ROWWISE_ADAGRAD` where :func:`one_pass_train` can apply the kernels'
            update, else None (the tables still serve no-grad lookups).
        eps: the Adagrad epsilon.
    """

    weights: List[torch.Tensor]
    kernels: List[nn.Module]
    momenta: List[torch.Tensor]
    optimizer: Optional[int]
    eps: float
    storage: List[int] = field(init=False)

    def __post_init__(self) -> None:
        self.storage = kernel_storage(self.kernels)

    def is_current(self) -> bool:
        """Whether the views still look at the kernels' storage (a kernel whose buffers were replaced, e.g.
        by loading a state that reallocates them, needs the tables found again)."""
        return kernel_storage(self.kernels) == self.storage

    def learning_rates(self) -> torch.Tensor:
        """[T] float64 current learning rate of each slot's kernel."""
        rate: Dict[int, float] = {}
        for k in self.kernels:
            if id(k) not in rate:
                rate[id(k)] = float(k.get_learning_rate())
        return torch.tensor([rate[id(k)] for k in self.kernels], dtype=torch.float64)


def kernel_tables(ebc: nn.Module, names: Sequence[str]) -> Optional[KernelTables]:
    """The tables ``names`` of a sharded collection whose fused kernels hold them whole in this one process,
    or None where some table is not whole here (several ranks, a table outside the fused kernels).

    Args:
        ebc: a ShardedEmbeddingBagCollection.
        names: table names in slot order.

    Example::

        tables = kernel_tables(dmp.module.provider.ebc, ["t_user__tier0", "t_user__tier1"])
        tables.optimizer    # ROWWISE_ADAGRAD: one_pass_train can update them
    """
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return None
    supported = {EmbOptimType.EXACT_SGD: SGD, EmbOptimType.EXACT_ROWWISE_ADAGRAD: ROWWISE_ADAGRAD}
    found: Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor], nn.Module]] = {}
    kinds, eps = set(), set()
    for lookup in getattr(ebc, "_lookups", []):
        for module in getattr(lookup, "_emb_modules", []):
            kernel = getattr(module, "_emb_module", None)
            config = getattr(module, "config", None)
            if kernel is None or config is None or not hasattr(kernel, "split_embedding_weights"):
                return None
            weights = kernel.split_embedding_weights()
            tables = config.embedding_tables
            if len(weights) != len(tables):
                return None
            optimizer = supported.get(getattr(kernel, "optimizer", None))
            if float(getattr(kernel.optimizer_args, "weight_decay", 0.0)) != 0.0:
                optimizer = None
            kinds.add(optimizer)
            eps.add(float(getattr(kernel.optimizer_args, "eps", 0.0)))
            states = kernel.split_optimizer_states() if optimizer == ROWWISE_ADAGRAD else None
            for j, (table, w) in enumerate(zip(tables, weights)):
                shape = (table.num_embeddings, table.embedding_dim)
                if w.dtype != torch.float32 or w.device.type != "cpu" or tuple(w.shape) != shape:
                    return None
                momentum = states[j][0] if states is not None else None
                if momentum is not None and (momentum.numel() != w.size(0) or momentum.dtype != torch.float32):
                    kinds.add(None)
                found[table.name] = (w, momentum, kernel)
    if any(n not in found for n in names):
        return None
    kind = kinds.pop() if len(kinds) == 1 and len(eps) == 1 else None
    return KernelTables(
        weights=[found[n][0] for n in names],
        kernels=[found[n][2] for n in names],
        momenta=[found[n][1] for n in names] if kind == ROWWISE_ADAGRAD else [],  # type: ignore[misc]
        optimizer=kind,
        eps=eps.pop() if len(eps) == 1 else 0.0,
    )


class _OnePass(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        anchor: torch.Tensor,
        tables: KernelTables,
        lookup: Tuple[Any, ...],
        maps: Tuple[torch.Tensor, ...],
        mean: bool,
    ) -> torch.Tensor:
        out, keys, out_offsets, key_weights, row_offset = torch.ops.recdim.tier_lookup_keys(*lookup)
        ctx.tables, ctx.maps, ctx.mean = tables, maps, mean
        ctx.keys, ctx.out_offsets, ctx.key_weights, ctx.row_offset = keys, out_offsets, key_weights, row_offset
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        tables: KernelTables = ctx.tables
        torch.ops.recdim.tier_update(
            grad.contiguous(),
            ctx.keys,
            ctx.out_offsets,
            ctx.key_weights,
            ctx.mean,
            tables.weights,
            tables.momenta,
            ctx.row_offset,
            tables.learning_rates(),
            tables.eps,
            tables.optimizer,
            *ctx.maps,
        )
        return None, None, None, None, None


_ANCHOR = torch.zeros(0, requires_grad=True)


def one_pass_train(
    tables: KernelTables, lookup: Tuple[Any, ...], maps: Tuple[torch.Tensor, ...], mean: bool
) -> torch.Tensor:
    """``[B * F, K]`` tier lookup whose backward updates ``tables`` in place (see the module docstring).

    Args:
        tables: the kernels' tables, as :func:`kernel_tables` found them, with a supported optimizer.
        lookup: the arguments of ``torch.ops.recdim.tier_lookup`` (ids ... mean), ``tables.weights`` as tables.
        maps: the column maps as ``lookup`` holds them: (map_base, map_stride, slot_map_base, maps).
        mean: mean pooling (the bag length divides each id's gradient).

    Returns:
        Tensor: [B * F, K], requiring grad; its backward returns no gradient to anything else.
    """
    if tables.optimizer is None:
        raise ValueError("these kernels' optimizer has no one-pass update; route the ids instead")
    return _OnePass.apply(_ANCHOR, tables, lookup, maps, mean)
