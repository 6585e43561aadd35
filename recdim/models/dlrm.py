"""DLRM: bottom MLP on dense features, pairwise dot interaction, top MLP."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.models.base import InteractionArch
from recdim.models.mlp import MLP
from recdim.modules.provider import stack_embeddings


class DotInteraction(nn.Module):
    """Pairwise dot products between N vectors, upper triangle without the diagonal.

    Pairs come in row-major order of the upper triangle: (0, 1), (0, 2), ..., (0, N-1), (1, 2), ...

    Args:
        num_vectors: N, the number of vectors that interact.

    Call:
        vectors (Tensor): [B, N, K].

    Returns:
        Tensor: [B, N * (N - 1) / 2], entry for pair (i, j) is <v_i, v_j>.

    Example::

        inter = DotInteraction(3)
        z = inter(torch.randn(8, 3, 16))  # [8, 3]
    """

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        self.num_vectors = int(num_vectors)
        rows, cols = torch.triu_indices(self.num_vectors, self.num_vectors, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @property
    def num_pairs(self) -> int:
        return self.num_vectors * (self.num_vectors - 1) // 2

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(vectors, vectors.transpose(1, 2))  # [B, N, N]
        return gram[:, self.rows, self.cols]


class DLRMArch(InteractionArch):
    """DLRM (Naumov et al., 2019) on K-wide embeddings.

    The dense features go through a bottom MLP (``bottom_mlp`` hidden sizes, then K, ReLU after every
    layer as in TorchRec's DLRM) to a K-wide dense vector. The dense vector and the F embeddings
    interact through pairwise dot products (upper triangle, no self-dot); the pairs, concatenated with
    the dense vector, feed the top MLP (``top_mlp`` hidden sizes, then a plain Linear to 1). With
    D = 0 the bottom MLP is skipped and only the F embeddings interact.

    Args:
        feature_names: the F sparse features.
        embedding_dim: K.
        num_dense: D (0 when there are no dense features).
        bottom_mlp: hidden widths of the bottom MLP before its final K-wide layer.
        top_mlp: hidden widths of the top MLP before its final 1-wide layer.
        dropout: dropout after each hidden layer of the top MLP.
        init_bias: initial output bias.

    Call:
        dense (Tensor): [B, D].
        embeddings (KeyedTensor): keys ``feature_names``, values [B, F * K].

    Returns:
        Tensor: [B] logits or ratings.

    Example::

        arch = DLRMArch(["c0", "c1", "c2"], 16, 13, bottom_mlp=(32,), top_mlp=(64, 32))
        y = arch(torch.randn(8, 13), kt)  # [8]
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        embedding_dim: int,
        num_dense: int,
        bottom_mlp: Sequence[int] = (32,),
        top_mlp: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        init_bias: float = 0.0,
    ) -> None:
        super().__init__(feature_names, embedding_dim, num_dense)
        k = self.embedding_dim
        self.bottom: nn.Module = MLP(self.num_dense, list(bottom_mlp) + [k]) if self.num_dense > 0 else nn.Identity()
        num_vectors = len(self.feature_names) + (1 if self.num_dense > 0 else 0)
        if num_vectors < 2:
            raise ValueError(
                "DLRM needs at least two vectors to interact (two sparse features, or one plus dense "
                f"features); got {len(self.feature_names)} sparse and {self.num_dense} dense"
            )
        self.interaction = DotInteraction(num_vectors)
        top_in = self.interaction.num_pairs + (k if self.num_dense > 0 else 0)
        self.top = MLP(top_in, top_mlp, out_features=1, dropout=dropout)
        assert self.top.final is not None
        with torch.no_grad():
            self.top.final.bias.fill_(float(init_bias))

    def forward(self, dense: torch.Tensor, embeddings: KeyedTensor) -> torch.Tensor:
        e = stack_embeddings(embeddings, self.feature_names)  # [B, F, K]
        if self.num_dense > 0:
            x = self.bottom(dense.to(e.dtype))  # [B, K]
            pairs = self.interaction(torch.cat([x.unsqueeze(1), e], dim=1))
            top_in = torch.cat([x, pairs], dim=1)
        else:
            top_in = self.interaction(e)
        return self.top(top_in).squeeze(-1)
