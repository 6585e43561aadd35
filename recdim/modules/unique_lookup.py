"""Looking up each distinct id of a batch of single-valued features once.

Skewed id distributions repeat ids within a batch (the demo's eight features draw 16,384 ids of which
about 2,850 are distinct). A pooled lookup of one id per bag reads, thresholds and back-propagates every
repeat; :func:`unique_ids` turns the batch into one bag per *distinct* (feature, id), in an
EmbeddingBagCollection layout of its own (bag j of feature g holds its j-th distinct id, the bags past the
feature's count are empty; as many bags per feature as the feature with the most distinct ids needs), and
gives the index that expands the per-distinct rows back to [B, G].
The expansion's backward sums the repeats' gradients, which is what the fused kernel would have summed
(row by row, so sparse updates stay the same up to float summation order); :func:`expand_rows` sums them
by a radix sort of the expansion and one ``embedding_bag`` on CPU (a few times faster than the
``index_add`` of ``index_select``'s backward, the same sums in the same order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

# The radix sort (numpy's stable argsort of int16 keys) takes expansions into at most this many rows.
RADIX_ROWS = 1 << 15


@dataclass(frozen=True)
class UniqueIds:
    """The distinct ids of a batch of single-valued features and how to expand them back.

    Attributes:
        ids: [U] the distinct ids, feature after feature (in order of first occurrence within a feature).
        counts: [G] distinct ids per feature (sum U).
        width: ``max(counts)``: rows ``[0, width)`` of the deduplicated lookup hold every distinct id.
        expand: [B * G] int64: row ``slot * G + g`` of the deduplicated rows ``[width, G, ...]`` (flattened)
            for sample b, feature g, in [B, G] order.
    """

    ids: torch.Tensor
    counts: torch.Tensor
    width: int
    expand: torch.Tensor

    @property
    def num_unique(self) -> int:
        return self.ids.numel()

    def lengths(self, stride: int) -> torch.Tensor:
        """[G * stride] int32 bag lengths of the deduplicated lookup with ``stride >= width`` bags per feature:
        1 for the first ``counts[g]`` bags of feature g, 0 after."""
        bags = torch.arange(stride, device=self.counts.device)
        return (bags < self.counts.unsqueeze(1)).to(torch.int32).view(-1)

    def per_feature(self) -> List[torch.Tensor]:
        """The distinct ids of each feature (views into ``ids``)."""
        return list(torch.split(self.ids, self.counts.tolist()))


def unique_ids(values: torch.Tensor, row_offsets: torch.Tensor, batch: int, workspace: torch.Tensor) -> UniqueIds:
    """The distinct ids of a batch where every bag holds exactly one id, in O(G * B) (no sort).

    Each id is written to its row of ``workspace`` (one int64 per row of all the features' tables) by
    every occurrence; the occurrence whose write stuck stands for the id. The workspace's contents are
    scratch: nothing is read before it is written in the same call.

    Args:
        values: [G * B] ids, feature after feature (a KeyedJaggedTensor's values with all lengths 1).
        row_offsets: [G * B] int64: for each lookup, the first row of its feature's table in the tables
            concatenated (``offsets.repeat_interleave(B)``), so that ``id + row_offsets`` is unique.
        batch: B.
        workspace: int64, at least as long as the tables' rows together, on the device of ``values``.

    Returns:
        UniqueIds: ``rows_unique.reshape(width * G, -1)[expand]`` is the [B * G] row of every lookup.

    Example::

        offsets = torch.tensor([0, 10]).repeat_interleave(3)
        u = unique_ids(torch.tensor([3, 3, 1, 0, 0, 0]), offsets, 3, torch.empty(20, dtype=torch.long))
        u.ids, u.counts, u.width     # tensor([3, 1, 0]), tensor([2, 1]), 2
    """
    total = values.numel()
    group = total // batch if batch else 0
    keyed = row_offsets + values.to(torch.int64)
    position = torch.arange(total, device=values.device)
    workspace.scatter_(0, keyed, position)
    pick = torch.take(workspace, keyed).eq_(position).nonzero().squeeze(1)  # one occurrence of each distinct id
    feature = torch.div(pick, batch, rounding_mode="floor")
    counts = torch.bincount(feature, minlength=group)
    first = torch.cumsum(counts, 0).sub_(counts)
    slot = torch.arange(pick.numel(), device=values.device).sub_(first.index_select(0, feature))
    workspace.scatter_(0, keyed.index_select(0, pick), slot)
    rows = torch.take(workspace, keyed.view(group, batch).t()).mul_(group)  # [B, G]
    rows += torch.arange(group, device=values.device)
    width = int(counts.max()) if group else 0
    return UniqueIds(values.index_select(0, pick).to(torch.int64), counts, width, rows.view(-1))


class _ExpandRows(torch.autograd.Function):
    """``rows.index_select(0, index)``; the backward sums the gradients of each row's repeats with one
    ``embedding_bag`` over the repeats grouped by a radix sort (CPU, at most :data:`RADIX_ROWS` rows)."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = rows.size(0)
        return rows.index_select(0, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], None]:
        (index,) = ctx.saved_tensors
        return sum_repeats(grad, index, ctx.num_rows), None


def sum_repeats(grad: torch.Tensor, index: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``zeros(num_rows, C).index_add_(0, index, grad)``: each row's repeats summed in their order.

    Args:
        grad: [n, C].
        index: [n] int64 in ``[0, num_rows)``.
        num_rows: R.

    Returns:
        Tensor: [R, C].
    """
    if grad.device.type != "cpu" or num_rows > RADIX_ROWS or grad.dtype != torch.float32:
        return grad.new_zeros(num_rows, grad.size(1)).index_add_(0, index, grad)
    order = torch.from_numpy(np.argsort(index.numpy().astype(np.int16), kind="stable"))  # radix: O(n)
    counts = torch.bincount(index, minlength=num_rows)
    offsets = torch.cumsum(counts, 0).sub_(counts)
    return torch.nn.functional.embedding_bag(order, grad.contiguous(), offsets, mode="sum")


def expand_rows(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows.index_select(0, index)`` (the deduplicated rows back to every lookup) with a faster backward
    on CPU: the same gradient, each row's repeats summed in the same order.

    Args:
        rows: [R, C] per-distinct rows.
        index: [n] int64 row of each lookup (``UniqueIds.expand``).

    Returns:
        Tensor: [n, C].

    Example::

        out = expand_rows(pruned.reshape(-1, K), distinct.expand).view(B, G, K)
    """
    if not (torch.is_grad_enabled() and rows.requires_grad):
        return rows.index_select(0, index)
    return _ExpandRows.apply(rows, index)
