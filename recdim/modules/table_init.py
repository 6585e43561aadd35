"""Deterministic table initialisation, identical for any world size and sharding.

Row block b of table ``key`` is drawn from a generator seeded by ``(seed, key, b)``, so a table holds the
same values whether it lives whole in one process or in table-, row- or column-wise shards over many;
each rank draws only the row blocks its shards overlap.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable, Dict, Iterator, Tuple

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

ROWS_PER_BLOCK = 4096

# State-dict keys of TorchRec table weights (EmbeddingBagCollection / EmbeddingCollection, sharded or not).
TABLE_PARAM = re.compile(r"(^|\.)(embedding_bags|embeddings)\.[^.]+\.weight$")


def _block_seed(seed: int, key: str, block: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{key}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def table_rows(
    seed: int, key: str, rows: Tuple[int, int], cols: Tuple[int, int], full_dim: int, std: float
) -> torch.Tensor:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of table ``key`` as initialised by :func:`init_tables`.

    Args:
        seed: run seed.
        key: the table's state-dict key.
        rows: row range.
        cols: column range.
        full_dim: the table's full width.
        std: standard deviation of the normal init.

    Returns:
        Tensor: [r1 - r0, c1 - c0] float32.
    """
    r0, r1 = rows
    out = torch.empty(r1 - r0, cols[1] - cols[0])
    for b in range(r0 // ROWS_PER_BLOCK, (r1 - 1) // ROWS_PER_BLOCK + 1 if r1 > r0 else 0):
        lo, hi = b * ROWS_PER_BLOCK, (b + 1) * ROWS_PER_BLOCK
        g = torch.Generator().manual_seed(_block_seed(seed, key, b))
        block = torch.randn(ROWS_PER_BLOCK, full_dim, generator=g) * std
        a, z = max(lo, r0), min(hi, r1)
        out[a - r0 : z - r0] = block[a - lo : z - lo, cols[0] : cols[1]]
    return out


def table_state(model: nn.Module) -> Iterator[Tuple[str, torch.Tensor]]:
    """``(key, tensor or ShardedTensor)`` for every TorchRec table weight in ``model``'s state dict."""
    for key, value in model.state_dict().items():
        if TABLE_PARAM.search(key):
            yield key, value


def local_pieces(value: torch.Tensor) -> Iterator[Tuple[torch.Tensor, Tuple[int, int], Tuple[int, int]]]:
    """``(local tensor, row range, column range)`` of each piece of a (possibly sharded) 2-D tensor."""
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            (r, c), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            yield shard.tensor, (r, r + nr), (c, c + nc)
    else:
        yield value, (0, value.size(0)), (0, value.size(1))


@torch.no_grad()
def init_tables(model: nn.Module, seed: int, std: float, fill: Callable[..., torch.Tensor] = table_rows) -> None:
    """Writes the deterministic initial values into every table (whole or sharded) of ``model``.

    Example::

        dmp = shard_model(model, cfg.train, ctx)
        init_tables(dmp, seed=0, std=0.05)
    """
    for key, value in table_state(model):
        full_dim = value.size(1)
        for local, rows, cols in local_pieces(value):
            local.copy_(fill(seed, key, rows, cols, full_dim, std).to(local.device, local.dtype))


@torch.no_grad()
def snapshot(model: nn.Module) -> Dict[str, list]:
    """A copy of this rank's part of every state entry (tables' local shards and dense tensors)."""
    out: Dict[str, list] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            out[key] = [s.tensor.detach().clone() for s in value.local_shards()]
        elif isinstance(value, torch.Tensor):
            out[key] = [value.detach().clone()]
    return out


@torch.no_grad()
def restore(model: nn.Module, snap: Dict[str, list]) -> None:
    """Copies a :func:`snapshot` back in place."""
    for key, value in model.state_dict().items():
        if key not in snap:
            continue
        targets = [s.tensor for s in value.local_shards()] if isinstance(value, ShardedTensor) else [value]
        for t, src in zip(targets, snap[key]):
            t.copy_(src)


def full_tables(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every TorchRec table of ``model`` assembled whole, by table name ({name: [N, K]}).

    Needs every piece to be local (a one-process group); a table split into several local column
    shards is put back together.
    """
    out: Dict[str, torch.Tensor] = {}
    for key, value in table_state(model):
        name = key.split(".")[-2]
        full = torch.zeros(value.size(0), value.size(1))
        covered = 0
        for local, (r0, r1), (c0, c1) in local_pieces(value):
            full[r0:r1, c0:c1] = local.detach().cpu().float()
            covered += (r1 - r0) * (c1 - c0)
        if covered != full.numel():
            raise RuntimeError(f"{key}: only {covered} of {full.numel()} values are local; load it in one process")
        out[name] = full
    return out
