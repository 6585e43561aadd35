"""Dense features as field vectors: the F embeddings followed by x_d * v_d for each dense feature d."""

from __future__ import annotations

import torch
from torch import nn


class DenseFields(nn.Module):
    """Appends one K-wide field vector per dense feature, x_d * v_d with a learned v_d, to the F embeddings.

    This is how AutoInt (Song et al., 2019) and NFM (He & Chua, 2017) embed a numerical feature, and how
    the FM pairwise term of :class:`~recdim.models.fm.SecondOrder` reads one; the field arches (AutoInt,
    NFM, PNN) interact the F + D vectors alike.

    Args:
        embedding_dim: K.
        num_dense: D (0 for none: the embeddings pass through unchanged).
        init_std: standard deviation of the initial v_d.

    Call:
        dense (Tensor): [B, D].
        embeddings (Tensor): [B, F, K].

    Returns:
        Tensor: [B, F + D, K].

    Example::

        fields = DenseFields(16, 4)
        v = fields(torch.randn(8, 4), torch.randn(8, 3, 16))  # [8, 7, 16]
    """

    def __init__(self, embedding_dim: int, num_dense: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.num_dense = int(num_dense)
        self.vectors = nn.Parameter(torch.randn(self.num_dense, embedding_dim) * init_std) if self.num_dense else None

    def num_fields(self, num_sparse: int) -> int:
        """N = F + D, the number of field vectors for ``num_sparse`` = F embeddings."""
        return int(num_sparse) + self.num_dense

    def forward(self, dense: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        if self.vectors is None:
            return embeddings
        d = dense.to(embeddings.dtype).unsqueeze(-1) * self.vectors  # [B, D, K]
        return torch.cat([embeddings, d], dim=1)
