"""Wide&Deep: a linear (wide) part and an MLP (deep) part on the same embeddings, logits summed."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.models.base import InteractionArch
from recdim.models.fm import FirstOrder
from recdim.models.mlp import DeepTower
from recdim.modules.provider import stack_embeddings


class WideDeepArch(InteractionArch):
    """Wide&Deep (Cheng et al., 2016): bias + wide linear part + deep MLP.

    The wide part is linear in its inputs: a learned vector w_f per field read against the embedding
    (w_f . e_f, which carries the per-id weight of a classic wide model) plus a linear map of the dense
    features, i.e. :class:`~recdim.models.fm.FirstOrder`. Hand-crafted cross-product features have no
    place in the provider contract, so the wide part has none. The deep part is an MLP on the F
    embeddings concatenated with the dense features.

    Args:
        feature_names: the F sparse features.
        embedding_dim: K.
        num_dense: D (0 for none).
        hidden: hidden widths of the deep MLP (``ModelConfig.mlp``), followed by a Linear to 1.
        dropout: dropout after each hidden layer.
        init_bias: initial global bias.

    Call:
        dense (Tensor): [B, D].
        embeddings (KeyedTensor): keys ``feature_names``, values [B, F * K].

    Returns:
        Tensor: [B] logits or ratings.

    Example::

        arch = WideDeepArch(["c0", "c1"], 16, 13, hidden=(64, 32))
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
    ) -> None:
        super().__init__(feature_names, embedding_dim, num_dense)
        num_fields = len(self.feature_names)
        self.wide = FirstOrder(num_fields, self.embedding_dim, self.num_dense)
        self.deep = DeepTower(num_fields, self.embedding_dim, self.num_dense, hidden, dropout)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, dense: torch.Tensor, embeddings: KeyedTensor) -> torch.Tensor:
        e = stack_embeddings(embeddings, self.feature_names)  # [B, F, K]
        return self.bias + self.wide(dense, e) + self.deep(dense, e)
