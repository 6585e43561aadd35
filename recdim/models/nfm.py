"""NFM: bi-interaction pooling of the field vectors into one K-vector, an MLP on it, plus FM's linear part."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.models.base import InteractionArch
from recdim.models.fields import DenseFields
from recdim.models.fm import FirstOrder
from recdim.models.mlp import MLP
from recdim.modules.provider import stack_embeddings


def bi_interaction(vectors: torch.Tensor) -> torch.Tensor:
    """Bi-interaction pooling sum_{i<j} v_i * v_j (elementwise) in O(N K): 0.5 * ((sum v)^2 - sum v^2).

    Summed over K it is the FM pairwise term, :func:`~recdim.models.fm.fm_second_order`.

    Args:
        vectors: [B, N, K].

    Returns:
        Tensor: [B, K].

    Example::

        z = bi_interaction(torch.randn(8, 5, 16))  # [8, 16]
    """
    return 0.5 * (vectors.sum(dim=1).pow(2) - vectors.pow(2).sum(dim=1))


class NFMArch(InteractionArch):
    """Neural Factorization Machine (He & Chua, 2017, "Neural Factorization Machines for Sparse Predictive
    Analytics"): bias + sum_f w_f . e_f + u . x + MLP(BI(field vectors)) -> 1.

    The field vectors are the F embeddings and x_d * v_d per dense feature
    (:class:`~recdim.models.fields.DenseFields`); :func:`bi_interaction` pools them into one K-vector,
    dropout follows (the paper's dropout on the bi-interaction layer; its batch norm is left out), then an
    MLP ends in one score. The linear part is FM's (:class:`~recdim.models.fm.FirstOrder`). With no
    hidden layers, the model is FM with a learned weight per pairwise dimension (the paper's NFM-0).

    Args:
        feature_names: the F sparse features.
        embedding_dim: K.
        num_dense: D (0 for none).
        hidden: hidden widths of the MLP (``ModelConfig.mlp``), followed by a Linear to 1.
        dropout: dropout on the bi-interaction vector and after each hidden layer.
        init_bias: initial global bias.

    Call:
        dense (Tensor): [B, D].
        embeddings (KeyedTensor): keys ``feature_names``, values [B, F * K].

    Returns:
        Tensor: [B] logits or ratings.

    Example::

        arch = NFMArch(["c0", "c1", "c2"], 16, 13, hidden=(64,))
        y = arch(torch.randn(8, 13), kt)  # [8]
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        embedding_dim: int,
        num_dense: int,
        hidden: Sequence[int] = (64,),
        dropout: float = 0.0,
        init_bias: float = 0.0,
    ) -> None:
        super().__init__(feature_names, embedding_dim, num_dense)
        self.linear = FirstOrder(len(self.feature_names), self.embedding_dim, self.num_dense)
        self.fields = DenseFields(self.embedding_dim, self.num_dense)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else nn.Identity()
        self.mlp = MLP(self.embedding_dim, hidden, out_features=1, dropout=dropout)
        assert self.mlp.final is not None
        nn.init.zeros_(self.mlp.final.bias)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, dense: torch.Tensor, embeddings: KeyedTensor) -> torch.Tensor:
        e = stack_embeddings(embeddings, self.feature_names)  # [B, F, K]
        pooled = self.dropout(bi_interaction(self.fields(dense, e)))  # [B, K]
        return self.bias + self.linear(dense, e) + self.mlp(pooled).squeeze(-1)
