"""Filling the tier tables of a (possibly sharded) model: from masked K-wide weights, or from the masked
deterministic initialisation of the uniform tables they replace.

Both work on whatever shards this rank holds (:func:`recdim.modules.table_init.local_pieces`), so they run after
``shard_model`` on any world size: exporting a pruned model, rewinding a lottery ticket to its initial
values, or retraining the tiers from the same start as the masked K-wide model.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from recdim.layout.tier_plan import TablePlan, TierPlan
from recdim.layout.tier_values import tier_values
from recdim.modules.table_init import ROWS_PER_BLOCK, local_pieces, table_rows, table_state

_TABLE_OF_KEY = re.compile(r"(?:^|\.)(?:embedding_bags|embeddings)\.([^.]+)\.weight$")


def table_of_key(key: str) -> Optional[str]:
    """The table name inside a TorchRec table's state-dict key (``...embedding_bags.<table>.weight``)."""
    m = _TABLE_OF_KEY.search(key)
    return m.group(1) if m else None


def _tier_index(plans: Sequence[TablePlan]) -> Dict[str, Tuple[TablePlan, int]]:
    return {t.name: (p, j) for p in plans for j, t in enumerate(p.tiers)}


@torch.no_grad()
def write_tier_tables(model: nn.Module, plans: Sequence[TablePlan], weights: Mapping[str, torch.Tensor]) -> int:
    """Writes ``weights[plan.name] ⊙ mask`` into this rank's pieces of every tier table in ``model``.

    Args:
        model: a model holding tier tables (unsharded, or wrapped by DistributedModelParallel).
        plans: the table plans.
        weights: ``{table: [N, K]}`` values (entries outside the mask are ignored).

    Returns:
        int: tier tables written on this rank.

    Example::

        dmp = shard_model(RecModel(TieredEmbeddingProvider(plans, device=meta), arch), cfg.train, ctx)
        write_tier_tables(dmp, plans, initial_weights)      # lottery-ticket rewinding
    """
    index = _tier_index(plans)
    cache: Dict[str, list] = {}
    written = 0
    for key, value in table_state(model):
        name = table_of_key(key)
        if name not in index:
            continue
        plan, j = index[name]
        if plan.name not in cache:
            cache[plan.name] = tier_values(plan, weights[plan.name].detach().cpu().float())
        full = cache[plan.name][j]
        for local, (r0, r1), (c0, c1) in local_pieces(value):
            local.copy_(full[r0:r1, c0:c1].to(local.device, local.dtype))
        written += 1
    return written


@torch.no_grad()
def gather_tier_values(
    model: nn.Module, plans: Sequence[TablePlan], dst: int = 0
) -> Optional[Dict[str, List[torch.Tensor]]]:
    """The whole tier tables of a (possibly sharded) model on rank ``dst``, e.g. to export it.

    A collective when tables are sharded: every rank must call it; ranks other than ``dst`` get ``None``.

    Args:
        model: a model holding tier tables (unsharded, or wrapped by DistributedModelParallel).
        plans: the table plans.
        dst: the rank that receives the tables.

    Returns:
        ``{table: per tier [n_j, d_j]}`` on ``dst``, else ``None``.

    Example::

        values = gather_tier_values(dmp, plans)
        if values is not None:
            write_artifact(path, plans, values, arch_state, cfg.model, schema)
    """
    index = _tier_index(plans)
    rank = dist.get_rank() if dist.is_initialized() else 0
    got: Dict[str, torch.Tensor] = {}
    for key, value in table_state(model):
        name = table_of_key(key)
        if name not in index:
            continue
        if isinstance(value, ShardedTensor):
            out = torch.zeros(value.size(), dtype=value.dtype) if rank == dst else None
            value.gather(dst, out)
            if out is not None:
                got[name] = out
        elif rank == dst:
            got[name] = value.detach().cpu().clone()
    if rank != dst:
        return None
    return {p.name: [got[t.name] for t in p.tiers] for p in plans}


def _uniform_rows(seed: int, key: str, ids: torch.Tensor, num_rows: int, dim: int, std: float) -> torch.Tensor:
    """[len(ids), dim] rows ``ids`` of the uniform table ``key`` as :func:`init_tables` draws them."""
    out = torch.empty(ids.numel(), dim)
    blocks = torch.div(ids, ROWS_PER_BLOCK, rounding_mode="floor")
    for b in torch.unique(blocks).tolist():
        sel = torch.nonzero(blocks == b).squeeze(1)
        lo, hi = b * ROWS_PER_BLOCK, min((b + 1) * ROWS_PER_BLOCK, num_rows)
        out[sel] = table_rows(seed, key, (lo, hi), (0, dim), dim, std)[ids[sel] - lo]
    return out


def _masked_rows(
    plan: TablePlan, tier: TierPlan, rows: Tuple[int, int], cols: Tuple[int, int], source: torch.Tensor
) -> torch.Tensor:
    maps = tier.row_maps()[rows[0] : rows[1], cols[0] : cols[1]].to(torch.int64)
    padded = torch.cat([source, torch.zeros(source.size(0), 1)], dim=1)
    return padded[torch.arange(source.size(0)).unsqueeze(1), torch.where(maps >= 0, maps, plan.embedding_dim)]


def masked_init(
    plans: Sequence[TablePlan],
    source_key: Callable[[str], str] = lambda table: f"provider.ebc.embedding_bags.{table}.weight",
) -> Callable[..., torch.Tensor]:
    """A ``fill`` for :func:`recdim.modules.table_init.init_tables` that gives every tier the masked initial values
    of the uniform table it replaces (other tables get the usual init).

    Args:
        plans: the table plans.
        source_key: table name -> state-dict key of the uniform table whose init is masked (the default is
            a RecModel over the uniform provider).

    Returns:
        ``fill(seed, key, rows, cols, full_dim, std) -> Tensor`` for ``init_tables``.

    Example::

        init_tables(dmp, cfg.train.seed, cfg.train.init_std, fill=masked_init(plans))
    """
    index = _tier_index(plans)

    def fill(
        seed: int, key: str, rows: Tuple[int, int], cols: Tuple[int, int], full_dim: int, std: float
    ) -> torch.Tensor:
        name = table_of_key(key)
        if name not in index:
            return table_rows(seed, key, rows, cols, full_dim, std)
        plan, j = index[name]
        tier = plan.tiers[j]
        off = plan.tier_offsets[j]
        ids = plan.row_ids()[off + rows[0] : off + rows[1]]
        source = _uniform_rows(seed, source_key(plan.name), ids, plan.num_embeddings, plan.embedding_dim, std)
        return _masked_rows(plan, tier, rows, cols, source)

    return fill
