"""DeepFM: the FM part and a deep MLP on the same embeddings, logits summed."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.models.fm import FactorizationMachine, FirstOrderArch, linear_table_for
from recdim.models.mlp import DeepTower
from recdim.modules.provider import stack_embeddings


class DeepFMArch(FirstOrderArch):
    """DeepFM (Guo et al., 2017): bias + FM(first + second order) + MLP(concatenated inputs).

    Both parts read the same K-wide embeddings. The FM part is :class:`FactorizationMachine` (dense
    features enter linearly and as field vectors x_d * v_d); the deep part is an MLP on the F
    embeddings concatenated with the dense features. With ``linear = "table"`` the FM part's first-order
    term reads the arch's own :class:`~recdim.models.fm.LinearTable` instead of the embeddings.

    Args:
        feature_names: the F sparse features.
        embedding_dim: K.
        num_dense: D (0 for none).
        hidden: hidden widths of the deep MLP (``ModelConfig.mlp``), followed by a Linear to 1.
        dropout: dropout after each hidden layer.
        init_bias: initial global bias.
        linear: ``embedding`` (w_f . e_f) or ``table`` (``model.linear``).
        num_embeddings: ids per feature (needed with ``table``).
        pooling: bag pooling of the table (``model.pooling``).

    Call:
        dense (Tensor): [B, D].
        embeddings (KeyedTensor): keys ``feature_names``, values [B, F * K].
        features (KeyedJaggedTensor, optional): the batch's ids; needed with ``table``.

    Returns:
        Tensor: [B] logits or ratings.

    Example::

        arch = DeepFMArch(["c0", "c1", "c2"], 16, 13, hidden=(64, 32))
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
        linear: str = "embedding",
        num_embeddings: Optional[Mapping[str, int]] = None,
        pooling: str = "sum",
    ) -> None:
        super().__init__(feature_names, embedding_dim, num_dense)
        num_fields = len(self.feature_names)
        table = linear_table_for(linear, self.feature_names, num_embeddings, pooling)
        self.fm = FactorizationMachine(num_fields, self.embedding_dim, self.num_dense, table)
        self.deep = DeepTower(num_fields, self.embedding_dim, self.num_dense, hidden, dropout)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(
        self, dense: torch.Tensor, embeddings: KeyedTensor, features: Optional[KeyedJaggedTensor] = None
    ) -> torch.Tensor:
        e = stack_embeddings(embeddings, self.feature_names)  # [B, F, K]
        return self.bias + self.fm(dense, e, features) + self.deep(dense, e)
