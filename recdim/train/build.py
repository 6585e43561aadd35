"""Builds the unsharded RecModel for a config and a prepared dataset."""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from recdim.config import Config, ModelConfig
from recdim.data.prepared import PreparedDataset, SplitArrays
from recdim.data.schema import LabelKind
from recdim.models.rec_model import RecModel
from recdim.modules.provider import EmbeddingProvider
from recdim.modules.uniform import UniformEmbeddingProvider

# (config, {feature: num_embeddings}, weighted, device) -> provider
ProviderFactory = Callable[[ModelConfig, Dict[str, int], bool, torch.device], EmbeddingProvider]


def uniform_provider(
    cfg: ModelConfig, num_embeddings: Dict[str, int], weighted: bool, device: torch.device
) -> EmbeddingProvider:
    """The uniform-dimension baseline provider (one K-wide table per feature)."""
    return UniformEmbeddingProvider(num_embeddings, cfg.embedding_dim, cfg.pooling, weighted, device)


def output_bias(label_kind: LabelKind, train_labels: np.ndarray) -> float:
    """The arch's initial output bias: mean rating, or the logit of the positive rate."""
    m = float(np.mean(train_labels)) if train_labels.size else 0.0
    if label_kind == LabelKind.RATING:
        return m
    m = min(max(m, 1e-4), 1 - 1e-4)
    return math.log(m / (1 - m))


def build_model(
    cfg: Config,
    dataset: PreparedDataset,
    features: Sequence[str],
    train: Optional[SplitArrays] = None,
    provider_factory: ProviderFactory = uniform_provider,
    device: torch.device = torch.device("meta"),
) -> RecModel:
    """Provider (tables on ``device``, ``meta`` for DMP to materialise) + arch for ``features``.

    Dense parameters are initialised from ``torch.manual_seed(cfg.train.seed)``, so every rank builds the
    same model.

    Example::

        model = build_model(cfg, ds, ds.feature_names(cfg.data.features), train_arrays)
    """
    from recdim.models.factory import build_arch

    torch.manual_seed(cfg.train.seed)
    schema = dataset.schema
    num_embeddings = {f: schema[f].num_embeddings for f in features}
    weighted = any(schema[f].kind.value == "weighted" for f in features)
    provider = provider_factory(cfg.model, num_embeddings, weighted, device)
    bias = output_bias(schema.label, train.labels) if train is not None else 0.0
    arch = build_arch(cfg.model, list(features), len(schema.dense_names), init_bias=bias, num_embeddings=num_embeddings)
    return RecModel(provider, arch, embedding_l2=cfg.train.embedding_l2)
