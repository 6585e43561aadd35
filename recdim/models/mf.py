"""Matrix factorisation for ratings: global bias + per-id biases + <e_user, e_item>."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.models.base import InteractionArch
from recdim.models.fm import FirstOrder
from recdim.modules.provider import stack_embeddings


class MFArch(InteractionArch):
    """Biased matrix factorisation: b + w_u . e_u + w_i . e_i + <e_u, e_i>.

    The two features are the user and the item, in ``feature_names`` order. An arch only sees K-wide
    embeddings, so the per-user and per-item biases of classic biased MF enter as learned field
    vectors read against the embedding (w_u . e_u, w_i . e_i; see
    :class:`~recdim.models.fm.FirstOrder`). Dense features, when present, add a linear term u . x.

    Args:
        feature_names: exactly two features: user, item.
        embedding_dim: K.
        num_dense: D (0 for none).
        init_bias: initial global bias, e.g. the mean training rating.

    Call:
        dense (Tensor): [B, D].
        embeddings (KeyedTensor): keys ``feature_names``, values [B, 2 * K].

    Returns:
        Tensor: [B] predicted ratings (or logits).

    Example::

        arch = MFArch(["user", "item"], 16, 0, init_bias=3.53)
        y = arch(torch.empty(8, 0), kt)  # [8]
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        embedding_dim: int,
        num_dense: int,
        init_bias: float = 0.0,
    ) -> None:
        if len(feature_names) != 2:
            raise ValueError(
                f"MF needs exactly two features (user, item), got {len(feature_names)}: "
                f"{list(feature_names)}; use fm, neumf or deepfm for more fields"
            )
        super().__init__(feature_names, embedding_dim, num_dense)
        self.linear = FirstOrder(2, self.embedding_dim, self.num_dense)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, dense: torch.Tensor, embeddings: KeyedTensor) -> torch.Tensor:
        e = stack_embeddings(embeddings, self.feature_names)  # [B, 2, K]
        dot = (e[:, 0] * e[:, 1]).sum(dim=-1)
        return self.bias + self.linear(dense, e) + dot
