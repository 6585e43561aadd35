"""Factorization Machine on K-wide embeddings: bias + first-order + second-order terms.

The pieces (:class:`FirstOrder`, :class:`SecondOrder`, :class:`FactorizationMachine`) are reused by
DeepFM and Wide&Deep through composition.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.models.base import InteractionArch
from recdim.modules.provider import stack_embeddings


def fm_second_order(vectors: torch.Tensor) -> torch.Tensor:
    """FM pairwise term sum_{i<j} <v_i, v_j> in O(N K): 0.5 * ((sum v)^2 - sum v^2), summed over K.

    Args:
        vectors: [B, N, K].

    Returns:
        Tensor: [B].

    Example::

        s = fm_second_order(torch.randn(8, 5, 16))  # [8]
    """
    square_of_sum = vectors.sum(dim=1).pow(2)
    sum_of_squares = vectors.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)


class FirstOrder(nn.Module):
    """Linear terms: a learned vector w_f per field (w_f . e_f) plus a linear map of dense features.

    An arch only sees K-wide embeddings, so the per-id weight of a classic FM / wide model enters as
    w_f . e_id: the embedding carries the per-id bias, the field vector reads it out.

    Args:
        num_fields: F.
        embedding_dim: K.
        num_dense: D (0 for none).

    Call:
        dense (Tensor): [B, D].
        embeddings (Tensor): [B, F, K].

    Returns:
        Tensor: [B], sum over fields of w_f . e_f plus u . dense (no bias).

    Example::

        first = FirstOrder(3, 16, 4)
        y = first(torch.randn(8, 4), torch.randn(8, 3, 16))  # [8]
    """

    def __init__(self, num_fields: int, embedding_dim: int, num_dense: int) -> None:
        super().__init__()
        self.field_weight = nn.Parameter(torch.zeros(num_fields, embedding_dim))
        self.num_dense = int(num_dense)
        self.dense_linear = nn.Linear(self.num_dense, 1, bias=False) if self.num_dense > 0 else None

    def per_field(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Per-field linear terms w_f . e_f.

        Args:
            embeddings: [B, F, K].

        Returns:
            Tensor: [B, F].
        """
        return (embeddings * self.field_weight).sum(dim=-1)

    def forward(self, dense: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        out = self.per_field(embeddings).sum(dim=1)
        if self.dense_linear is not None:
            out = out + self.dense_linear(dense.to(out.dtype)).squeeze(-1)
        return out


class SecondOrder(nn.Module):
    """FM pairwise interactions among the F embeddings and the D dense features.

    Dense feature d enters as its own field vector x_d * v_d, with a learned K-vector v_d.

    Args:
        embedding_dim: K.
        num_dense: D (0 for none).

    Call:
        dense (Tensor): [B, D].
        embeddings (Tensor): [B, F, K].

    Returns:
        Tensor: [B], sum over all pairs i < j of the F + D field vectors of <v_i, v_j>.

    Example::

        second = SecondOrder(16, 4)
        y = second(torch.randn(8, 4), torch.randn(8, 3, 16))  # [8]
    """

    def __init__(self, embedding_dim: int, num_dense: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.num_dense = int(num_dense)
        self.dense_vectors = (
            nn.Parameter(torch.randn(self.num_dense, embedding_dim) * init_std) if self.num_dense > 0 else None
        )

    def field_vectors(self, dense: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """All field vectors: the F embeddings, then x_d * v_d per dense feature.

        Args:
            dense: [B, D].
            embeddings: [B, F, K].

        Returns:
            Tensor: [B, F + D, K].
        """
        if self.dense_vectors is None:
            return embeddings
        d = dense.to(embeddings.dtype).unsqueeze(-1) * self.dense_vectors  # [B, D, K]
        return torch.cat([embeddings, d], dim=1)

    def forward(self, dense: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return fm_second_order(self.field_vectors(dense, embeddings))


class FactorizationMachine(nn.Module):
    """First-order plus second-order FM terms, without the global bias.

    Args:
        num_fields: F.
        embedding_dim: K.
        num_dense: D (0 for none).

    Call:
        dense (Tensor): [B, D].
        embeddings (Tensor): [B, F, K].

    Returns:
        Tensor: [B].

    Example::

        fm = FactorizationMachine(3, 16, 0)
        y = fm(torch.empty(8, 0), torch.randn(8, 3, 16))  # [8]
    """

    def __init__(self, num_fields: int, embedding_dim: int, num_dense: int) -> None:
        super().__init__()
        self.first_order = FirstOrder(num_fields, embedding_dim, num_dense)
        self.second_order = SecondOrder(embedding_dim, num_dense)

    def forward(self, dense: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.first_order(dense, embeddings) + self.second_order(dense, embeddings)


class FMArch(InteractionArch):
    """Factorization Machine (Rendle, 2010): bias + sum_f w_f . e_f + u . x + sum_{i<j} <v_i, v_j>.

    The pairwise term runs over the F embeddings and the D dense features (each as x_d * v_d).

    Args:
        feature_names: the F sparse features.
        embedding_dim: K.
        num_dense: D (0 for none).
        init_bias: initial global bias.

    Call:
        dense (Tensor): [B, D].
        embeddings (KeyedTensor): keys ``feature_names``, values [B, F * K].

    Returns:
        Tensor: [B] logits or ratings.

    Example::

        arch = FMArch(["user", "item", "genre"], 16, 0)
        y = arch(torch.empty(8, 0), kt)  # [8]
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        embedding_dim: int,
        num_dense: int,
        init_bias: float = 0.0,
    ) -> None:
        super().__init__(feature_names, embedding_dim, num_dense)
        self.fm = FactorizationMachine(len(self.feature_names), self.embedding_dim, self.num_dense)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, dense: torch.Tensor, embeddings: KeyedTensor) -> torch.Tensor:
        e = stack_embeddings(embeddings, self.feature_names)
        return self.bias + self.fm(dense, e)
