"""Logistic regression: one weight per id and per dense feature, no interactions."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.models.fm import FirstOrder, FirstOrderArch, linear_table_for
from recdim.modules.provider import stack_embeddings


class LRArch(FirstOrderArch):
    """Logistic regression (the linear baseline of PEP, Liu et al., 2021): bias + sum_f beta_f(id) + u . x.

    An arch sees K-wide embeddings only, so the weight of an id is read from its embedding as
    beta_f(id) = w_f . e_id with a learned vector w_f per field: exactly the linear part of FM, DeepFM and
    Wide&Deep (:class:`~recdim.models.fm.FirstOrder`), and LR is FM without its pairwise term. Any weight
    per id is reachable, so the model class is LR's at every K. LR over one-dimensional embeddings is
    this arch on a provider that keeps one column per id (e.g. a tier table whose rows keep column 0),
    or on a K = 1 table where the training kernel allows it (``ModelConfig`` asks K to be a multiple of 4
    for FBGEMM's TBE). With ``linear = "table"`` the weights are the arch's own one-weight-per-id
    :class:`~recdim.models.fm.LinearTable` (N values per feature, trained like a table) and the embeddings
    are not read at all: classic LR, the baseline PEP-0 is compared with.

    Args:
        feature_names: the F sparse features.
        embedding_dim: K (any width; only w_f . e_id matters).
        num_dense: D (0 for none).
        init_bias: initial bias (e.g. the base-rate logit).
        linear: ``embedding`` (w_f . e_id) or ``table`` (``model.linear``).
        num_embeddings: ids per feature (needed with ``table``).
        pooling: bag pooling of the table (``model.pooling``).

    Call:
        dense (Tensor): [B, D].
        embeddings (KeyedTensor): keys ``feature_names``, values [B, F * K].
        features (KeyedJaggedTensor, optional): the batch's ids; needed with ``table``.

    Returns:
        Tensor: [B] logits (or ratings, for linear regression).

    Example::

        arch = LRArch(["c0", "c1", "c2"], 4, 13, init_bias=-1.2)
        y = arch(torch.randn(8, 13), kt)  # [8]
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        embedding_dim: int,
        num_dense: int,
        init_bias: float = 0.0,
        linear: str = "embedding",
        num_embeddings: Optional[Mapping[str, int]] = None,
        pooling: str = "sum",
    ) -> None:
        super().__init__(feature_names, embedding_dim, num_dense)
        table = linear_table_for(linear, self.feature_names, num_embeddings, pooling)
        self.linear = FirstOrder(len(self.feature_names), self.embedding_dim, self.num_dense, table)
        if self.linear.field_weight is not None:
            with torch.no_grad():  # w_f = 1: ids learn from the first step (at 0 they wait for w_f to move)
                self.linear.field_weight.fill_(1.0)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(
        self, dense: torch.Tensor, embeddings: KeyedTensor, features: Optional[KeyedJaggedTensor] = None
    ) -> torch.Tensor:
        return self.bias + self.linear(dense, stack_embeddings(embeddings, self.feature_names), features)
