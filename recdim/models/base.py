"""The interaction-arch contract: dense features + K-wide per-feature embeddings -> one score per row."""

from __future__ import annotations

import abc
from typing import List, Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor


class InteractionArch(nn.Module, abc.ABC):
    """Base of all arches (DLRM, DeepFM, FM, Wide&Deep, MF, MLP, NeuMF, AutoInt, NFM, PNN, LR).

    An arch sees only what an :class:`~recdim.modules.provider.EmbeddingProvider` returns, never a
    table, so every search method and the compressed serving tables feed it unchanged.

    Args:
        feature_names: sparse features, in the order the arch reads them.
        embedding_dim: K.
        num_dense: number of dense features D (0 when the data has none).

    Call:
        dense (Tensor): [B, D] float32 (D may be 0).
        embeddings (KeyedTensor): keys ``feature_names``, values [B, F * K].

    Returns:
        Tensor: [B] logits (binary labels) or predicted ratings.

    An arch whose :attr:`reads_ids` is true also takes the batch's ids (KeyedJaggedTensor) as a third
    argument (e.g. FM's first-order term from a table of its own, ``model.linear = "table"``).
    """

    reads_ids: bool = False

    def __init__(self, feature_names: Sequence[str], embedding_dim: int, num_dense: int) -> None:
        super().__init__()
        self.feature_names: List[str] = list(feature_names)
        self.embedding_dim = int(embedding_dim)
        self.num_dense = int(num_dense)

    @abc.abstractmethod
    def forward(self, dense: torch.Tensor, embeddings: KeyedTensor) -> torch.Tensor: ...
