"""L2 regularisation of the embeddings a batch looks up, as a gradient term (works with fused optimizers)."""

from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor


class _AddL2Gradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.save_for_backward(values)
        ctx.weight = weight
        return values.view_as(values)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:
        (values,) = ctx.saved_tensors
        return grad + (2.0 * ctx.weight / values.size(0)) * values, None


class EmbeddingL2(nn.Module):
    """Identity in the forward; the backward adds the gradient of ``weight * sum_b ||e_b||^2 / B``.

    ``e_b`` is row b of the pooled ``[B, F * K]`` embeddings, so every occurrence of an id pulls its row
    towards zero: frequent ids are regularised in proportion to how often they are seen (the usual
    embedding regularisation of CTR models). The fused table optimizers (FBGEMM's row-wise Adagrad on CPU)
    receive it as part of the embedding gradient; the reported loss leaves it out.

    Args:
        weight: lambda; 0 makes the module a no-op.

    Call:
        embeddings (KeyedTensor): the provider's output, values [B, F * K].

    Returns:
        KeyedTensor: the same values (and keys) in the forward.

    Example::

        reg = EmbeddingL2(1e-5)
        out = arch(dense, reg(provider(kjt)))
    """

    def __init__(self, weight: float = 0.0) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"embedding L2 weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def forward(self, embeddings: KeyedTensor) -> KeyedTensor:
        if self.weight == 0.0 or not self.training or not embeddings.values().requires_grad:
            return embeddings
        values = _AddL2Gradient.apply(embeddings.values(), self.weight)
        return KeyedTensor(keys=embeddings.keys(), length_per_key=embeddings.length_per_key(), values=values)
