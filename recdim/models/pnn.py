"""PNN: a product layer (pairwise inner products, the outer-product sum, or both) beside the field vectors,
then an MLP."""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.config.arches import PNNProduct
from recdim.models.base import InteractionArch
from recdim.models.dlrm import DotInteraction
from recdim.models.fields import DenseFields
from recdim.models.mlp import MLP
from recdim.modules.provider import stack_embeddings


class OuterProductSum(nn.Module):
    """OPNN's product signal with the paper's superposition: f_S f_S^T with f_S = sum_i f_i, flattened.

    Args:
        embedding_dim: K.

    Call:
        vectors (Tensor): [B, N, K].

    Returns:
        Tensor: [B, K * K].

    Example::

        p = OuterProductSum(16)(torch.randn(8, 5, 16))  # [8, 256]
    """

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.embedding_dim = int(embedding_dim)

    @property
    def out_features(self) -> int:
        return self.embedding_dim * self.embedding_dim

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        s = vectors.sum(dim=1)  # [B, K]
        return (s.unsqueeze(2) * s.unsqueeze(1)).flatten(1)


class PNNArch(InteractionArch):
    """Product-based Neural Network (Qu et al., 2016, "Product-based Neural Networks for User Response
    Prediction"): MLP([z, p]) -> 1, with z the field vectors side by side and p the product signals.

    The field vectors are the F embeddings and x_d * v_d per dense feature
    (:class:`~recdim.models.fields.DenseFields`). ``product`` picks p: ``inner`` (IPNN) the pairwise inner
    products <f_i, f_j>, i < j (:class:`~recdim.models.dlrm.DotInteraction`); ``outer`` (OPNN) the flattened
    outer product of the field sum (:class:`OuterProductSum`); ``both`` (PNN*) the two side by side. The
    first Linear of the MLP reads [z, p] with full weights, i.e. the paper's l_1 = ReLU(l_z + l_p + b_1)
    without its low-rank factorisation of the product weights.

    Args:
        feature_names: the F sparse features.
        embedding_dim: K.
        num_dense: D (0 for none).
        hidden: hidden widths of the MLP (``ModelConfig.mlp``), followed by a Linear to 1.
        dropout: dropout after each hidden layer.
        init_bias: initial output bias.
        product: ``inner``, ``outer`` or ``both`` (``ModelConfig.pnn_product``).

    Call:
        dense (Tensor): [B, D].
        embeddings (KeyedTensor): keys ``feature_names``, values [B, F * K].

    Returns:
        Tensor: [B] logits or ratings.

    Example::

        arch = PNNArch(["c0", "c1", "c2"], 16, 13, hidden=(64, 32), product="inner")
        y = arch(torch.randn(8, 13), kt)  # [8]
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        embedding_dim: int,
        num_dense: int,
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        init_bias: float = 0.0,
        product: PNNProduct = "inner",
    ) -> None:
        super().__init__(feature_names, embedding_dim, num_dense)
        if product not in ("inner", "outer", "both"):
            raise ValueError(f"PNN product must be 'inner', 'outer' or 'both', got {product!r}")
        self.product = product
        self.fields = DenseFields(self.embedding_dim, self.num_dense)
        n = self.fields.num_fields(len(self.feature_names))
        self.inner = DotInteraction(n) if product in ("inner", "both") else None
        self.outer = OuterProductSum(self.embedding_dim) if product in ("outer", "both") else None
        width = n * self.embedding_dim
        width += self.inner.num_pairs if self.inner is not None else 0
        width += self.outer.out_features if self.outer is not None else 0
        self.mlp = MLP(width, hidden, out_features=1, dropout=dropout)
        assert self.mlp.final is not None
        with torch.no_grad():
            self.mlp.final.bias.fill_(float(init_bias))

    def forward(self, dense: torch.Tensor, embeddings: KeyedTensor) -> torch.Tensor:
        e = stack_embeddings(embeddings, self.feature_names)  # [B, F, K]
        f = self.fields(dense, e)  # [B, N, K]
        parts: List[torch.Tensor] = [f.flatten(1)]
        if self.inner is not None:
            parts.append(self.inner(f))
        if self.outer is not None:
            parts.append(self.outer(f))
        return self.mlp(torch.cat(parts, dim=1)).squeeze(-1)
