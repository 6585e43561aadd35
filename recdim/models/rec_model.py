"""A recommendation model = an embedding provider composed with an interaction arch."""

from __future__ import annotations

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recdim.models.base import InteractionArch
from recdim.modules.embedding_l2 import EmbeddingL2
from recdim.modules.provider import EmbeddingProvider


class RecModel(nn.Module):
    """Provider + arch. DistributedModelParallel wraps this module: tables inside ``provider`` are
    sharded, everything else is data-parallel.

    Args:
        provider: produces K-wide embeddings per feature.
        arch: scores a row from dense features and those embeddings.
        embedding_l2: weight of the L2 penalty on the looked-up embeddings
            (:class:`~recdim.modules.embedding_l2.EmbeddingL2`; 0 = none).

    Call:
        dense (Tensor): [B, D].
        sparse (KeyedJaggedTensor): keys ``provider.feature_names``.

    Returns:
        Tensor: [B] logits or ratings.

    Example::

        model = RecModel(UniformEmbeddingProvider({"user": 944, "item": 1683}, 16),
                         MFArch(["user", "item"], 16, 0))
        scores = model(batch.dense_features, batch.sparse_features)
    """

    def __init__(self, provider: EmbeddingProvider, arch: InteractionArch, embedding_l2: float = 0.0) -> None:
        super().__init__()
        if provider.embedding_dim != arch.embedding_dim:
            raise ValueError(f"provider width {provider.embedding_dim} != arch width {arch.embedding_dim}")
        if provider.feature_names != arch.feature_names:
            raise ValueError(f"provider features {provider.feature_names} != arch features {arch.feature_names}")
        self.provider = provider
        self.arch = arch
        self.regularizer = EmbeddingL2(embedding_l2)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        embeddings = self.regularizer(self.provider(sparse))
        if self.arch.reads_ids:
            return self.arch(dense, embeddings, sparse)
        return self.arch(dense, embeddings)
