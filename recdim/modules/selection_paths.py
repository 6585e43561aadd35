"""How soft selection meets the tables: three exact ways of computing ``pool_i e_i ⊙ alpha[row(i)]``.

:class:`~recdim.modules.soft_selection.SoftSelectionProvider` composes them per feature; all of them run
their lookups in TorchRec modules (fused FBGEMM kernels, sharded by DMP):

- :class:`PerIdScaling` (single-valued features, the fast path): the feature is looked up as usual in an
  EmbeddingBagCollection and its pooled row (its one id) is multiplied by the alpha row of that id's
  block, gathered per sample. Cost: one [B, K] product per feature.
- :class:`BlockSplitPooling` (bags): the feature's ids are routed into L virtual features, one per block,
  all reading the feature's one table; the L pooled rows are scaled by their alpha rows and summed.
  Cost: an L-times wider pooled output (and all-to-all), [B, L, K] per feature.
- :class:`SequenceScaling` (bags): the feature's table sits in an EmbeddingCollection, which returns one
  row per id; each row is scaled by its alpha row and the bag is summed by ``index_add``. Cost: one
  [nnz, K] row set per feature, so it beats block splitting when bags are shorter than about L.

Every path reads alpha rows through :func:`scale_by_rows` / ``index_select``: one gather forward, one
``index_add`` over the rows backward (advanced indexing ``alpha[rows]`` would accumulate by ``index_put``,
several times slower on CPU).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch

BLOCK_KEY_SEP = "@@"


@dataclass
class GroupInput:
    """What the provider hands a path for its group of G features.

    Args:
        batch_size: B.
        alpha: [R, K] soft-selection weights.
        pooled: [B, G, len(keys), K] pooled rows of the group's keys (pooled paths).
        block_rows: [G, L] alpha row of every (feature, block).
        sample_rows: [B, G] alpha row of each sample's id (any row for an empty bag; per-id path).
        values: [nnz_g, K] one row per id, features in group order (sequence path).
        value_rows: [nnz_g] alpha row of each id (sequence path).
        value_segments: [nnz_g] ``g * B + sample`` of each id (sequence path).
        value_weights: [nnz_g] per-id weights of weighted features, else None.
    """

    batch_size: int
    alpha: torch.Tensor
    pooled: Optional[torch.Tensor] = None
    block_rows: Optional[torch.Tensor] = None
    sample_rows: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None
    value_rows: Optional[torch.Tensor] = None
    value_segments: Optional[torch.Tensor] = None
    value_weights: Optional[torch.Tensor] = None


def scale_by_rows(values: torch.Tensor, alpha: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``values * alpha[rows]``: alpha's rows gathered by one ``index_select``, so alpha's gradient is one
    ``index_add`` over ``rows``.

    Args:
        values: [..., K].
        alpha: [R, K].
        rows: int64, ``values.shape[:-1]``: the alpha row of each K-wide vector.

    Returns:
        Tensor: [..., K].

    Example::

        scaled = scale_by_rows(pooled, alpha, sample_rows)   # [B, G, K] * alpha[[B, G]]
    """
    return values * alpha.index_select(0, rows.reshape(-1)).view(values.shape)


class SelectionPath(abc.ABC):
    """One way of applying alpha to a group of features.

    ``pooled`` paths read their tables from the provider's EmbeddingBagCollection under the keys
    :meth:`keys` names (block b's ids go to key ``keys[key_of_block[b]]``); the others read per-id rows
    from its EmbeddingCollection under the feature's own name.
    """

    pooled: bool = True
    per_sample_rows: bool = False

    def keys(self, feature: str, num_blocks: int) -> List[str]:
        """Keys the feature's table is read under."""
        return [feature]

    def key_of_block(self, num_blocks: int) -> List[int]:
        """For each block b, the position (in :meth:`keys`) of the key its ids are routed to ([L])."""
        return [0] * num_blocks

    @abc.abstractmethod
    def combine(self, inp: GroupInput) -> torch.Tensor:
        """The group's scaled, sum-pooled embeddings, [B, G, K]."""


class PerIdScaling(SelectionPath):
    """Single-valued features (bags of 0 or 1 id): the pooled row times ``alpha[row(f, block(id))]``.

    An empty bag pools to zeros, so whichever alpha row it gets leaves output and gradients exact.
    """

    per_sample_rows = True

    def combine(self, inp: GroupInput) -> torch.Tensor:
        assert inp.pooled is not None and inp.sample_rows is not None
        return scale_by_rows(inp.pooled.squeeze(2), inp.alpha, inp.sample_rows)  # squeeze: a free backward


class BlockSplitPooling(SelectionPath):
    """Any bag, exactly: ``sum_b alpha[row(f, b)] ⊙ sum_{i in bag, block(i) = b} e_i``.

    Example::

        BlockSplitPooling().keys("genres", 3)   # ['genres@@0', 'genres@@1', 'genres@@2']
    """

    def keys(self, feature: str, num_blocks: int) -> List[str]:
        return [f"{feature}{BLOCK_KEY_SEP}{b}" for b in range(num_blocks)]

    def key_of_block(self, num_blocks: int) -> List[int]:
        return list(range(num_blocks))

    def combine(self, inp: GroupInput) -> torch.Tensor:
        assert inp.pooled is not None and inp.block_rows is not None
        G, L = inp.block_rows.shape
        weights = inp.alpha.index_select(0, inp.block_rows.reshape(-1)).view(G, L, -1)
        return _BlockWeightedSum.apply(inp.pooled, weights)


class SequenceScaling(SelectionPath):
    """Any bag, exactly, from per-id rows: ``index_add`` over the bag of ``w_i e_i ⊙ alpha[row(i)]``."""

    pooled = False

    def combine(self, inp: GroupInput) -> torch.Tensor:
        assert inp.values is not None and inp.value_rows is not None and inp.value_segments is not None
        scaled = scale_by_rows(inp.values, inp.alpha, inp.value_rows)
        if inp.value_weights is not None:
            scaled = scaled * inp.value_weights.unsqueeze(-1)
        B, K = inp.batch_size, inp.alpha.size(1)
        G = inp.block_rows.size(0) if inp.block_rows is not None else 0
        out = torch.zeros(G * B, K, dtype=scaled.dtype, device=scaled.device).index_add(0, inp.value_segments, scaled)
        return out.view(G, B, K).transpose(0, 1)


class _BlockWeightedSum(torch.autograd.Function):
    """``(pooled * weights).sum(2)`` for pooled [B, G, L, K] and weights [G, L, K] without [B, G, L, K]
    temporaries: accumulates block by block (about half the time of the broadcast product on CPU)."""

    @staticmethod
    def forward(ctx: Any, pooled: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pooled, weights)
        out = pooled[:, :, 0] * weights[:, 0]
        for b in range(1, pooled.size(2)):
            out.addcmul_(pooled[:, :, b], weights[:, b])
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        pooled, weights = ctx.saved_tensors
        grad_pooled = grad_weights = None
        if ctx.needs_input_grad[0]:  # not while tables are frozen
            grad_pooled = grad.unsqueeze(2) * weights
        if ctx.needs_input_grad[1]:
            grad_weights = torch.stack([(grad * pooled[:, :, b]).sum(0) for b in range(pooled.size(2))], dim=1)
        return grad_pooled, grad_weights
