"""NeuMF: a GMF part (e_u * e_i) and an MLP tower, fused by a final linear layer."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.models.base import InteractionArch
from recdim.models.mlp import MLP, concat_inputs
from recdim.modules.provider import stack_embeddings


class NeuMFArch(InteractionArch):
    """Neural matrix factorisation (He et al., 2017): Linear([e_u * e_i, MLP(e_u, e_i, ...)]) -> 1.

    The first two features are the user and the item. The GMF part is their elementwise product
    [B, K]; the MLP tower reads all F embeddings concatenated (user, item, then any extra fields) plus
    the dense features, and ends at its last hidden layer. A final Linear fuses both into one score.

    The original model gives GMF and the MLP tower separate embedding tables. Here every feature has
    one K-wide embedding (the provider contract), so the two parts share it; the dimension search
    therefore sizes one embedding that serves both.

    Args:
        feature_names: at least two features: user, item, then optional extra fields.
        embedding_dim: K.
        num_dense: D (0 for none).
        hidden: hidden widths of the MLP tower (``ModelConfig.mlp``); empty feeds the concatenated
            inputs to the fusion layer directly.
        dropout: dropout after each hidden layer.
        init_bias: initial bias of the fusion layer.

    Call:
        dense (Tensor): [B, D].
        embeddings (KeyedTensor): keys ``feature_names``, values [B, F * K].

    Returns:
        Tensor: [B] logits or ratings.

    Example::

        arch = NeuMFArch(["user", "item"], 16, 0, hidden=(64, 32))
        y = arch(torch.empty(8, 0), kt)  # [8]
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
        if len(feature_names) < 2:
            raise ValueError(
                f"NeuMF needs at least two features (user, item), got {len(feature_names)}: {list(feature_names)}"
            )
        super().__init__(feature_names, embedding_dim, num_dense)
        in_features = len(self.feature_names) * self.embedding_dim + self.num_dense
        self.tower = MLP(in_features, hidden, out_features=None, dropout=dropout)
        self.fuse = nn.Linear(self.embedding_dim + self.tower.out_features, 1)
        with torch.no_grad():
            self.fuse.bias.fill_(float(init_bias))

    def forward(self, dense: torch.Tensor, embeddings: KeyedTensor) -> torch.Tensor:
        e = stack_embeddings(embeddings, self.feature_names)  # [B, F, K]
        gmf = e[:, 0] * e[:, 1]  # [B, K]
        mlp = self.tower(concat_inputs(dense, e))  # [B, H]
        return self.fuse(torch.cat([gmf, mlp], dim=1)).squeeze(-1)
