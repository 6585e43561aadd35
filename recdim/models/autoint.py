"""AutoInt: stacked multi-head self-attention over the field vectors, residual connections, a linear output."""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.models.base import InteractionArch
from recdim.models.fields import DenseFields
from recdim.modules.provider import stack_embeddings


class InteractingLayer(nn.Module):
    """One AutoInt interacting layer: multi-head self-attention across fields with a residual connection.

    For field m and head h: alpha_mk = softmax_k(<W_Q^h e_m, W_K^h e_k>) (a plain inner product, as in the
    paper, no 1/sqrt(d') scaling), e~_m^h = sum_k alpha_mk W_V^h e_k; the heads are concatenated and
    e_m' = ReLU(e~_m + W_Res e_m).

    Args:
        in_dim: width of each input field vector (K for the first layer).
        head_dim: d', the width per head.
        num_heads: H.

    Call:
        fields (Tensor): [B, N, in_dim].

    Returns:
        Tensor: [B, N, H * d'].

    Example::

        layer = InteractingLayer(16, head_dim=32, num_heads=2)
        y = layer(torch.randn(8, 5, 16))  # [8, 5, 64]
    """

    def __init__(self, in_dim: int, head_dim: int, num_heads: int) -> None:
        super().__init__()
        if in_dim < 1 or head_dim < 1 or num_heads < 1:
            raise ValueError(f"widths and heads must be >= 1, got in={in_dim} d'={head_dim} H={num_heads}")
        self.head_dim = int(head_dim)
        self.num_heads = int(num_heads)
        out = self.head_dim * self.num_heads
        self.query = nn.Linear(in_dim, out, bias=False)
        self.key = nn.Linear(in_dim, out, bias=False)
        self.value = nn.Linear(in_dim, out, bias=False)
        self.residual = nn.Linear(in_dim, out, bias=False)
        self.out_dim = out

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, d']

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        b, n, _ = fields.shape
        q, k, v = self._heads(self.query(fields)), self._heads(self.key(fields)), self._heads(self.value(fields))
        attended = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # [B, H, N, d']
        attended = attended.transpose(1, 2).reshape(b, n, self.out_dim)
        return torch.relu(attended + self.residual(fields))


class AutoIntArch(InteractionArch):
    """AutoInt (Song et al., 2019, "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural
    Networks"): field vectors -> ``num_layers`` :class:`InteractingLayer` s -> Linear over all of them -> 1.

    The F embeddings and one vector x_d * v_d per dense feature (:class:`~recdim.models.fields.DenseFields`,
    the paper's embedding of a numerical field) form N = F + D fields. The output layer reads the
    concatenated final field vectors, ``w . (e_1' ++ ... ++ e_N') + b``, as in the paper; AutoInt+ (with an
    added deep network) is not this arch. A base model of PEP (Liu et al., 2021).

    Args:
        feature_names: the F sparse features.
        embedding_dim: K.
        num_dense: D (0 for none).
        num_layers: interacting layers (``ModelConfig.attention_layers``).
        num_heads: heads per layer H (``ModelConfig.attention_heads``).
        head_dim: width per head d' (``ModelConfig.attention_dim``).
        init_bias: initial output bias.

    Call:
        dense (Tensor): [B, D].
        embeddings (KeyedTensor): keys ``feature_names``, values [B, F * K].

    Returns:
        Tensor: [B] logits or ratings.

    Example::

        arch = AutoIntArch(["c0", "c1", "c2"], 16, 13, num_layers=3, num_heads=2, head_dim=32)
        y = arch(torch.randn(8, 13), kt)  # [8]
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        embedding_dim: int,
        num_dense: int,
        num_layers: int = 3,
        num_heads: int = 2,
        head_dim: int = 32,
        init_bias: float = 0.0,
    ) -> None:
        super().__init__(feature_names, embedding_dim, num_dense)
        if num_layers < 1:
            raise ValueError(f"AutoInt needs at least one interacting layer, got {num_layers}")
        self.fields = DenseFields(self.embedding_dim, self.num_dense)
        layers: List[InteractingLayer] = []
        width = self.embedding_dim
        for _ in range(int(num_layers)):
            layers.append(InteractingLayer(width, head_dim, num_heads))
            width = layers[-1].out_dim
        self.layers = nn.Sequential(*layers)
        self.output = nn.Linear(self.fields.num_fields(len(self.feature_names)) * width, 1)
        with torch.no_grad():
            self.output.bias.fill_(float(init_bias))

    def forward(self, dense: torch.Tensor, embeddings: KeyedTensor) -> torch.Tensor:
        e = stack_embeddings(embeddings, self.feature_names)  # [B, F, K]
        x = self.layers(self.fields(dense, e))  # [B, N, H * d']
        return self.output(x.flatten(1)).squeeze(-1)
