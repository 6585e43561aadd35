"""Embedding providers: every way of turning a KeyedJaggedTensor into K-wide per-feature embeddings."""

from recdim.modules.provider import EmbeddingProvider
from recdim.modules.uniform import UniformEmbeddingProvider

__all__ = ["EmbeddingProvider", "UniformEmbeddingProvider"]
