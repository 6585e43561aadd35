"""The MLP building block and the plain MLP arch: concatenated embeddings (+dense) -> MLP -> score."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.models.base import InteractionArch
from recdim.modules.provider import stack_embeddings


class MLP(nn.Module):
    """A stack of Linear + ReLU (+ Dropout) layers with an optional final plain Linear.

    Args:
        in_features: width of the input.
        hidden: widths of the Linear + ReLU layers, in order (may be empty).
        out_features: width of a final Linear with no activation; ``None`` ends at the last hidden
            layer (or passes the input through unchanged when ``hidden`` is empty too).
        dropout: dropout probability after each hidden activation (0 disables it).

    Call:
        x (Tensor): [B, in_features].

    Returns:
        Tensor: [B, out_dim], where ``out_dim`` is ``out_features``, else ``hidden[-1]``, else
        ``in_features``.

    Example::

        mlp = MLP(32, [64, 32], out_features=1, dropout=0.1)
        y = mlp(torch.randn(8, 32))  # [8, 1]
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: Optional[int] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if in_features < 0 or any(h <= 0 for h in hidden):
            raise ValueError(f"MLP widths must be positive, got in={in_features} hidden={list(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: List[nn.Module] = []
        width = int(in_features)
        for h in hidden:
            layers.append(nn.Linear(width, int(h)))
            layers.append(nn.ReLU())
            if dropout > 0.0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        self.final: Optional[nn.Linear] = None
        if out_features is not None:
            self.final = nn.Linear(width, int(out_features))
            width = int(out_features)
        self.layers = nn.Sequential(*layers)
        self.in_features = int(in_features)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)
        if self.final is not None:
            x = self.final(x)
        return x


def concat_inputs(dense: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Flat deep-tower input: the F embeddings side by side, then the dense features.

    Args:
        dense: [B, D] (D may be 0).
        embeddings: [B, F, K], e.g. from :func:`~recdim.modules.provider.stack_embeddings`.

    Returns:
        Tensor: [B, F * K + D].

    Example::

        x = concat_inputs(dense, stack_embeddings(kt, ["user", "item"]))  # [B, 2 * K + D]
    """
    flat = embeddings.reshape(embeddings.size(0), -1)
    if dense.size(-1) == 0:
        return flat
    return torch.cat([flat, dense.to(flat.dtype)], dim=1)


class DeepTower(nn.Module):
    """The deep part of DeepFM, Wide&Deep and the MLP arch: an MLP over the concatenated embeddings and
    dense features, ending in one score whose bias starts at zero.

    Args:
        num_fields: F.
        embedding_dim: K.
        num_dense: D (0 when there are no dense features).
        hidden: hidden widths (``ModelConfig.mlp``), followed by a Linear to 1.
        dropout: dropout after each hidden layer.

    Call:
        dense (Tensor): [B, D].
        embeddings (Tensor): [B, F, K].

    Returns:
        Tensor: [B].

    Example::

        tower = DeepTower(3, 16, 13, hidden=(64, 32))
        y = tower(torch.randn(8, 13), torch.randn(8, 3, 16))  # [8]
    """

    def __init__(
        self, num_fields: int, embedding_dim: int, num_dense: int, hidden: Sequence[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.mlp = MLP(num_fields * embedding_dim + num_dense, hidden, out_features=1, dropout=dropout)
        assert self.mlp.final is not None
        nn.init.zeros_(self.mlp.final.bias)

    def forward(self, dense: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(concat_inputs(dense, embeddings)).squeeze(-1)


class MLPArch(InteractionArch):
    """A plain deep model: concatenated embeddings and dense features through an MLP to one score.

    Args:
        feature_names: the F sparse features.
        embedding_dim: K.
        num_dense: D (0 when there are no dense features).
        hidden: hidden widths of the MLP (``ModelConfig.mlp``).
        dropout: dropout after each hidden layer.
        init_bias: initial output bias (e.g. the mean rating, or the base-rate logit).

    Call:
        dense (Tensor): [B, D].
        embeddings (KeyedTensor): keys ``feature_names``, values [B, F * K].

    Returns:
        Tensor: [B] logits or ratings.

    Example::

        arch = MLPArch(["user", "item"], 16, 0, hidden=(64, 32))
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
        super().__init__(feature_names, embedding_dim, num_dense)
        self.deep = DeepTower(len(self.feature_names), self.embedding_dim, self.num_dense, hidden, dropout)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, dense: torch.Tensor, embeddings: KeyedTensor) -> torch.Tensor:
        return self.bias + self.deep(dense, stack_embeddings(embeddings, self.feature_names))
