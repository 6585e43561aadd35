"""Distributed setup: process group, TorchRec sharding plan, DistributedModelParallel and optimizers.

One code path for every scale: a single process is a gloo (CPU) or nccl (GPU) group of size one, and
``torchrun --nproc_per_node N`` gives N ranks. Tables inside :class:`EmbeddingBagCollection` and
:class:`EmbeddingCollection` modules are sharded by TorchRec's planner and trained by a fused FBGEMM
optimizer in the backward pass; every other parameter is data-parallel and trained by Adam.

Gradient scale: the loss on each rank is the mean over its part of the global batch. DDP averages the
dense gradients over ranks, and TorchRec's collectives divide the pooled-embedding gradients by the world
size on the way back (``torchrec.distributed.comm_ops`` gradient division, on by default), so a table
receives the global-mean gradient too: one process and N processes take the same steps with any
optimizer (tests/train/test_distributed.py checks SGD, whose steps are not scale-invariant).

Adam on CPU: the fused CPU kernel has no Adam, and TorchRec's CPU sharders offer the dense kernel only
with data-parallel sharding, so the tables are replicated on every rank (gradients all-reduced) and
trained by a regular Adam. On GPU the fused kernel runs Adam on sharded tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Type

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ModuleSharder, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from recdim.config import TrainConfig
from recdim.modules.provider import EmbeddingProvider
from recdim.modules.table_init import TABLE_PARAM  # noqa: F401  (re-exported)

# Parameter names of TorchRec tables, sharded or not: ``...embedding_bags.<table>.weight`` (EBC) and
# ``...embeddings.<table>.weight`` (EC).

SHARDING_TYPES = {
    "table_wise": [ShardingType.TABLE_WISE.value],
    "row_wise": [ShardingType.ROW_WISE.value],
    "column_wise": [ShardingType.COLUMN_WISE.value],
    "auto": None,
}


@dataclass(frozen=True)
class DistContext:
    """Where this process runs.

    Args:
        rank: global rank.
        world_size: number of ranks.
        local_world_size: ranks on this host.
        device: this rank's device.
        backend: ``gloo`` or ``nccl``.
    """

    rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(pref: str) -> torch.device:
    """``cpu``, ``cuda`` (error without one) or ``auto``; under torchrun each rank takes its local GPU."""
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device = 'cuda' but no CUDA device is available")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_pref: str = "auto") -> DistContext:
    """Joins the torchrun group from the environment, or makes a one-process group.

    Example::

        ctx = init_distributed("cpu")   # world_size 1 outside torchrun
    """
    device = resolve_device(device_pref)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    world = dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return DistContext(dist.get_rank(), world, local_world, device, backend)


def table_modules(model: nn.Module) -> List[nn.Module]:
    """The EmbeddingBagCollections and EmbeddingCollections inside ``model`` (what DMP shards)."""
    return [m for m in model.modules() if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))]


def _table_names(model: nn.Module) -> List[str]:
    names: List[str] = []
    for m in table_modules(model):
        configs = m.embedding_bag_configs() if isinstance(m, EmbeddingBagCollection) else m.embedding_configs()
        names += [c.name for c in configs]
    return names


def fused_optimizer_spec(
    cfg: TrainConfig, ctx: DistContext
) -> Tuple[Optional[Type[torch.optim.Optimizer]], Dict[str, Any]]:
    """The optimizer class and kwargs TorchRec maps to a fused TBE optimizer, or ``(None, {})`` when the
    tables must use the dense kernel with a regular optimizer (Adam on CPU)."""
    lr = cfg.embedding_lr
    if cfg.embedding_optimizer == "rowwise_adagrad":
        return RowWiseAdagrad, {"lr": lr, "eps": 1e-8}
    if cfg.embedding_optimizer == "adagrad":
        return torch.optim.Adagrad, {"lr": lr, "eps": 1e-8}
    if cfg.embedding_optimizer == "sgd":
        return torch.optim.SGD, {"lr": lr}
    if ctx.device.type == "cuda":
        return torch.optim.Adam, {"lr": lr}
    return None, {}


def sharders() -> List[ModuleSharder[nn.Module]]:
    """Sharders for the table modules recdim uses."""
    return [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]  # type: ignore[list-item]


def shard_model(model: nn.Module, cfg: TrainConfig, ctx: DistContext) -> DistributedModelParallel:
    """Plans and shards ``model``'s tables over the group and attaches the fused table optimizer.

    Args:
        model: the unsharded model; tables may live on the ``meta`` device.
        cfg: sharding type and table optimizer.
        ctx: the process group.

    Returns:
        The DistributedModelParallel module (dense parts wrapped in DDP).
    """
    opt_cls, opt_kwargs = fused_optimizer_spec(cfg, ctx)
    kernel = "fused" if opt_cls is not None else "dense"
    for m in table_modules(model):
        if opt_cls is not None:
            apply_optimizer_in_backward(opt_cls, m.parameters(), opt_kwargs)
    types = SHARDING_TYPES[cfg.sharding]
    if opt_cls is None:
        # CPU TorchRec kernels: "dense" exists only for data-parallel (replicated) tables.
        types = [ShardingType.DATA_PARALLEL.value]
    elif cfg.sharding == "row_wise" and ctx.device.type == "cpu":
        raise ValueError(
            "train.sharding = 'row_wise' needs GPUs: TorchRec's CPU sharders offer table_wise and column_wise"
        )
    constraints = {
        name: ParameterConstraints(sharding_types=types, compute_kernels=[kernel]) for name in _table_names(model)
    }
    topology = Topology(
        world_size=ctx.world_size, local_world_size=ctx.local_world_size, compute_device=ctx.device.type
    )
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    shs = sharders()
    plan = planner.collective_plan(model, shs, dist.GroupMember.WORLD)
    return DistributedModelParallel(module=model, device=ctx.device, plan=plan, sharders=shs)


def build_optimizer(model: DistributedModelParallel, cfg: TrainConfig, ctx: DistContext) -> CombinedOptimizer:
    """Adam on every parameter not already trained in the backward pass, combined with the fused
    table optimizer so that one ``step``/``zero_grad``/``state_dict`` covers both. Providers'
    architecture parameters (:meth:`EmbeddingProvider.arch_parameters`) are left to the search driver.

    With Adam on CPU (no fused kernel) the tables are on the dense kernel and join a second Adam with
    the table learning rate.
    """
    arch_ids = {id(p) for m in model.modules() if isinstance(m, EmbeddingProvider) for p in m.arch_parameters()}
    dense_params = {
        k: v for k, v in in_backward_optimizer_filter(model.named_parameters(), include=False) if id(v) not in arch_ids
    }
    table_params = {k: v for k, v in dense_params.items() if TABLE_PARAM.search(k)}
    other = {k: v for k, v in dense_params.items() if k not in table_params}
    opts: List[Tuple[str, Any]] = [("fused", model.fused_optimizer)]
    if other:
        opts.append(
            (
                "dense",
                KeyedOptimizerWrapper(other, lambda ps: torch.optim.Adam(ps, lr=cfg.lr, weight_decay=cfg.weight_decay)),
            )
        )
    if table_params:
        opts.append(
            ("tables", KeyedOptimizerWrapper(table_params, lambda ps: torch.optim.Adam(ps, lr=cfg.embedding_lr)))
        )
    return CombinedOptimizer(opts)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
