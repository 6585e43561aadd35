"""Writing tier outputs straight into the flat ``[B, F, K]`` output by a precomputed index, one sink for the rest."""

from __future__ import annotations

from typing import Any, Tuple

import torch


class _ScatterColumns(torch.autograd.Function):
    """``out[index[e]] += values[e]`` over a ``[size + 1]`` buffer whose last element (the sink) is dropped."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
        buf = values.new_zeros(size + 1)
        buf.index_add_(0, index.view(-1), values.reshape(-1))
        ctx.save_for_backward(index)
        ctx.size = size
        return buf.narrow(0, 0, size)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None, None]:
        (index,) = ctx.saved_tensors
        padded = grad.new_empty(ctx.size + 1)
        padded[: ctx.size].copy_(grad.reshape(-1))
        padded[ctx.size] = 0
        return padded.index_select(0, index.view(-1)).view(index.shape), None, None


def scatter_columns(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Adds every element of ``values`` into a zeroed flat output at ``index``; index ``size`` is a sink.

    The backward is one gather: elements sent to the sink (padding slots, empty bags) get zero gradient, so
    pruned entries of a tier table stay exactly zero while it trains.

    Args:
        values: [S, D] float, e.g. the tier collection's pooled output.
        index: [S, D] int32 / int64 in ``[0, size]``.
        size: elements of the output (``B * F * K``).

    Returns:
        Tensor: [size] float, contiguous.

    Example::

        out = scatter_columns(kt.values(), index, B * F * K).view(B, F * K)
    """
    if values.shape != index.shape:
        raise ValueError(f"values {tuple(values.shape)} and index {tuple(index.shape)} differ in shape")
    return _ScatterColumns.apply(values, index, size)
