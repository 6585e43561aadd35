"""Distributed bookkeeping over PEP's thresholded tables: walking local shards, writing initial
thresholds, counting survivors across ranks, and gathering masks and thresholds on rank 0.

Every function reads the state dict of the provider's (possibly sharded) table modules (the
EmbeddingBagCollection of single-valued features and the EmbeddingCollection of bags; tables are named
``t_<feature>`` on both), so it works for any sharding and any split of features between the two: each
rank handles the shards it holds and one integer (the count) or one gather (the masks) crosses the
group. Replicated (data-parallel) tables are counted and gathered from rank 0 only.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor

from recdim.modules.table_init import local_pieces
from recdim.modules.threshold import ThresholdEmbeddingProvider

_TABLE_KEY = re.compile(r"(?:^|\.)(?:embedding_bags|embeddings)\.([^.]+)\.weight$")

# (feature index, local piece, table columns) -> (tensor [r, k], embedding columns)
Extract = Callable[[int, torch.Tensor, Tuple[int, int]], Tuple[torch.Tensor, Tuple[int, int]]]


def rank_and_world() -> Tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def table_pieces(
    provider: ThresholdEmbeddingProvider, owned: bool = True
) -> Iterator[Tuple[int, str, torch.Tensor, Tuple[int, int], Tuple[int, int]]]:
    """``(feature index, table name, local piece, rows, table columns)`` of this rank's table shards.

    Args:
        provider: the (possibly sharded) provider.
        owned: skip replicated (data-parallel) tables on ranks other than 0, so each value is seen once
            across the group; ``False`` yields every local copy.
    """
    rank, world = rank_and_world()
    state: Dict[str, torch.Tensor] = {}
    for module in (provider.ebc, provider.ec):
        if module is not None:
            state.update(module.state_dict())
    for key, value in state.items():
        m = _TABLE_KEY.search(key)
        if m is None:
            continue
        if owned and world > 1 and rank != 0 and not isinstance(value, ShardedTensor):
            continue
        feature = provider.feature_of_table(m.group(1))
        for local, rows, cols in local_pieces(value):
            yield feature, m.group(1), local, rows, cols


@torch.no_grad()
def init_threshold_tables(provider: ThresholdEmbeddingProvider) -> None:
    """Writes the initial thresholds into the tables that hold s (after ``init_tables``; collective-free).

    Example::

        init_tables(dmp, seed, std); init_threshold_tables(dmp.module.provider)
    """
    for _, _, local, _, cols in table_pieces(provider, owned=False):
        provider.thresholds.init_piece(local, cols)


@torch.no_grad()
def count_nonzeros(provider: ThresholdEmbeddingProvider) -> Tuple[int, int]:
    """``(surviving values, all values)`` over every shard of every table, identical on all ranks."""
    # on the model's device (the ramp buffer lives there): NCCL reduces device tensors only
    nnz = provider.count_kept([(feature, local, cols) for feature, _, local, _, cols in table_pieces(provider)])
    if rank_and_world()[1] > 1:
        dist.all_reduce(nnz)
    return int(nnz), provider.embedding_params()


@torch.no_grad()
def gather_tables(
    provider: ThresholdEmbeddingProvider, extract: Extract, dtype: torch.dtype
) -> Optional[Dict[str, torch.Tensor]]:
    """Assembles ``extract`` of every shard into whole [N, K] tensors on rank 0 (collective).

    Returns:
        ``{table name: [N, K]}`` on rank 0, ``None`` elsewhere.
    """
    rank, world = rank_and_world()
    mine = []
    for feature, name, local, rows, cols in table_pieces(provider):
        part, value_cols = extract(feature, local, cols)
        mine.append((name, rows, value_cols, part.detach().cpu().to(dtype)))
    everyone = [mine]
    if world > 1:
        everyone = [None] * world if rank == 0 else None  # type: ignore[assignment]
        dist.gather_object(mine, everyone, dst=0)
    if rank != 0:
        return None
    k = provider.embedding_dim
    out = {t.name: torch.zeros(t.num_embeddings, k, dtype=dtype) for t in provider.tables}
    for pieces in everyone:
        for name, (r0, r1), (c0, c1), part in pieces:
            out[name][r0:r1, c0:c1] = part
    return out


def gather_masks(provider: ThresholdEmbeddingProvider) -> Optional[Dict[str, torch.Tensor]]:
    """``{table: bool [N, K]}`` of surviving values on rank 0 (``None`` elsewhere); collective."""
    return gather_tables(provider, provider.keep_mask, torch.bool)


def gather_thresholds(provider: ThresholdEmbeddingProvider) -> Optional[Dict[str, torch.Tensor]]:
    """Raw thresholds s on rank 0 (collective): the dense ones by name, table-resident ones as
    ``{table: [N, K]}``, plus ``offset`` (the ramp); the threshold in force is ``g(s + offset)``."""
    state = {k: v.detach().cpu().float() for k, v in provider.thresholds.dense_state().items()}
    if provider.thresholds.columns_per_value > 1:

        def s_part(feature: int, local: torch.Tensor, cols: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
            _, s, value_cols = provider.thresholds.split_piece(feature, local, cols)
            return s, value_cols

        tables = gather_tables(provider, s_part, torch.float32)
        if tables is None:
            return None
        state.update(tables)
    elif rank_and_world()[0] != 0:
        return None
    state["offset"] = provider.threshold_offset.detach().cpu().float().reshape(1)
    return state
