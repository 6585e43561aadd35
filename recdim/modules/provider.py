"""The embedding-provider contract: the one seam between tables (and search methods) and arches."""

from __future__ import annotations

import abc
import contextlib
from typing import Dict, Iterator, List, Mapping, Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor


class EmbeddingProvider(nn.Module, abc.ABC):
    """Turns sparse features into one K-wide pooled embedding per feature.

    Every way recdim has of producing embeddings (the plain uniform EmbeddingBagCollection, the DNIS
    soft selection, PEP thresholds, AutoDim candidates, the compressed tier tables) is a provider, so
    arches never see tables and methods never see arches. Pruned columns read as zeros.

    Args:
        feature_names: sparse features this provider embeds, in output order.
        embedding_dim: K, the width of every output embedding.

    Call:
        features (KeyedJaggedTensor): keys ``feature_names`` (extra keys are an error), batch size B.

    Returns:
        KeyedTensor: keys ``feature_names``, values of shape [B, F * K] (``key_dim=1``).
    """

    def __init__(self, feature_names: Sequence[str], embedding_dim: int) -> None:
        super().__init__()
        if not feature_names:
            raise ValueError("an embedding provider needs at least one feature")
        self._feature_names: List[str] = list(feature_names)
        self._embedding_dim = int(embedding_dim)
        self._tables_frozen = False

    @property
    def feature_names(self) -> List[str]:
        return list(self._feature_names)

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    @abc.abstractmethod
    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor: ...

    def arch_parameters(self) -> List[nn.Parameter]:
        """The method's architecture parameters (DNIS alpha, AutoDim weights), trained on validation
        batches by the search driver and never by the training optimizer. Empty by default."""
        return []

    @contextlib.contextmanager
    def frozen_tables(self) -> Iterator[None]:
        """Within this context the table lookups are cut from autograd.

        The fused optimizer updates a table during backward, so an architecture step on a validation
        batch must not backpropagate into the tables. Providers call :meth:`table_output` on what their
        tables return.
        """
        prev, self._tables_frozen = self._tables_frozen, True
        try:
            yield
        finally:
            self._tables_frozen = prev

    def ordered_features(self, features: KeyedJaggedTensor, order: Sequence[str] = ()) -> KeyedJaggedTensor:
        """``features`` with its keys in ``order`` (default: :attr:`feature_names`), permuted only when
        needed; a different key set is an error naming both."""
        order = list(order) or self._feature_names
        keys = features.keys()
        if keys == order:
            return features
        if sorted(keys) != sorted(order):
            raise ValueError(f"expected features {order}, got {keys}")
        return features.permute([keys.index(f) for f in order])

    def table_output(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` detached while tables are frozen, else unchanged."""
        return values.detach() if self._tables_frozen else values

    def effective_weights(self, tables: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The K-wide vector every id contributes before pooling, per feature.

        Pruning reads these: a mask keeps entries of this matrix, and a pruned model stores them.

        Args:
            tables: full values of this provider's TorchRec tables, by table name ([N, K] each).

        Returns:
            ``{feature: [N, K]}``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no per-id effective weights")

    @abc.abstractmethod
    def embedding_params(self) -> int:
        """Number of stored embedding values (all tables, all shards)."""

    @abc.abstractmethod
    def embedding_bytes(self) -> int:
        """Bytes of the embedding state as stored (values plus any maps or masks it needs)."""


def stack_embeddings(embeddings: KeyedTensor, feature_names: Sequence[str]) -> torch.Tensor:
    """[B, F, K] view of a provider's output, features in ``feature_names`` order.

    Example::

        e = stack_embeddings(provider(kjt), provider.feature_names)  # [B, F, K]
    """
    if list(embeddings.keys()) == list(feature_names):
        values = embeddings.values()
        return values.view(values.size(0), len(feature_names), -1)
    d = embeddings.to_dict()
    return torch.stack([d[name] for name in feature_names], dim=1)
