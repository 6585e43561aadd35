"""The uniform-dimension baseline: one TorchRec table of width K per feature."""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.modules.provider import EmbeddingProvider


def table_name(feature: str) -> str:
    """Name of the table that holds ``feature`` in the uniform provider."""
    return f"t_{feature}"


class UniformEmbeddingProvider(EmbeddingProvider):
    """Every feature gets its own K-wide table in one EmbeddingBagCollection.

    DistributedModelParallel shards ``self.ebc`` and runs its lookups through the fused FBGEMM kernels.

    Args:
        num_embeddings: rows per feature (``{feature: n}``), in output order.
        embedding_dim: K.
        pooling: ``"sum"`` or ``"mean"`` over a bag.
        is_weighted: features carry per-value weights (weighted numerical fields).
        device: where tables are allocated (``meta`` to let DMP materialise them sharded).

    Example::

        provider = UniformEmbeddingProvider({"user": 944, "item": 1683}, embedding_dim=16)
        kt = provider(kjt)            # KeyedTensor, values [B, 2 * 16]
    """

    def __init__(
        self,
        num_embeddings: Dict[str, int],
        embedding_dim: int,
        pooling: str = "sum",
        is_weighted: bool = False,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(list(num_embeddings), embedding_dim)
        pool = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}[pooling]
        self.tables = [
            EmbeddingBagConfig(
                name=table_name(f),
                embedding_dim=embedding_dim,
                num_embeddings=int(n),
                feature_names=[f],
                pooling=pool,
            )
            for f, n in num_embeddings.items()
        ]
        self.ebc = EmbeddingBagCollection(tables=self.tables, is_weighted=is_weighted, device=device)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        return self.ebc(features)

    def effective_weights(self, tables: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {f: tables[table_name(f)] for f in self.feature_names}

    def embedding_params(self) -> int:
        return sum(t.num_embeddings * t.embedding_dim for t in self.tables)

    def embedding_bytes(self) -> int:
        return 4 * self.embedding_params()
