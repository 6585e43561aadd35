"""Builds the interaction arch named by a :class:`~recdim.config.ModelConfig`."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from recdim.config import ARCHES, ModelConfig
from recdim.models.autoint import AutoIntArch
from recdim.models.base import InteractionArch
from recdim.models.deepfm import DeepFMArch
from recdim.models.dlrm import DLRMArch
from recdim.models.fm import FMArch
from recdim.models.lr import LRArch
from recdim.models.mf import MFArch
from recdim.models.mlp import MLPArch
from recdim.models.neumf import NeuMFArch
from recdim.models.nfm import NFMArch
from recdim.models.pnn import PNNArch
from recdim.models.wide_deep import WideDeepArch


def build_arch(
    cfg: ModelConfig,
    feature_names: Sequence[str],
    num_dense: int,
    init_bias: float = 0.0,
    num_embeddings: Optional[Mapping[str, int]] = None,
) -> InteractionArch:
    """The arch ``cfg.arch`` over ``feature_names`` (F features, K = ``cfg.embedding_dim``) and D dense.

    Args:
        cfg: arch name, K, MLP widths, dropout and the arch's own settings (AutoInt's attention, PNN's
            product).
        feature_names: the F sparse features, in the order the provider returns them. MF and NeuMF
            read the first two as user and item.
        num_dense: D (0 for none).
        init_bias: initial output bias (e.g. the mean training rating, or the base-rate logit).
        num_embeddings: ids per feature; needed by FM, DeepFM and LR with ``cfg.linear = "table"``, whose
            first-order weights sit in a table of the arch's own.

    Returns:
        InteractionArch: maps (dense [B, D], KeyedTensor [B, F * K]) to [B].

    Raises:
        ValueError: unknown arch, MF / NeuMF with fewer than two features, or ``cfg.linear = "table"``
            without ``num_embeddings``.

    Example::

        arch = build_arch(ModelConfig(arch="mf", embedding_dim=16), ["user", "item"], 0, init_bias=3.5)
    """
    names = list(feature_names)
    k = cfg.embedding_dim
    arch = cfg.arch
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {list(ARCHES)}")
    if not names:
        raise ValueError(f"arch {arch!r} needs at least one sparse feature")
    if arch in ("mf", "neumf") and len(names) < 2:
        raise ValueError(f"arch {arch!r} needs two features (user, item), got {len(names)}: {names}")
    linear = (cfg.linear, num_embeddings, cfg.pooling)
    if arch == "dlrm":
        return DLRMArch(names, k, num_dense, cfg.bottom_mlp, cfg.mlp, cfg.dropout, init_bias)
    if arch == "deepfm":
        return DeepFMArch(names, k, num_dense, cfg.mlp, cfg.dropout, init_bias, *linear)
    if arch == "fm":
        return FMArch(names, k, num_dense, init_bias, *linear)
    if arch == "wide_deep":
        return WideDeepArch(names, k, num_dense, cfg.mlp, cfg.dropout, init_bias)
    if arch == "mf":
        return MFArch(names, k, num_dense, init_bias)
    if arch == "mlp":
        return MLPArch(names, k, num_dense, cfg.mlp, cfg.dropout, init_bias)
    if arch == "neumf":
        return NeuMFArch(names, k, num_dense, cfg.mlp, cfg.dropout, init_bias)
    if arch == "autoint":
        return AutoIntArch(names, k, num_dense, cfg.attention_layers, cfg.attention_heads, cfg.attention_dim, init_bias)
    if arch == "nfm":
        return NFMArch(names, k, num_dense, cfg.mlp, cfg.dropout, init_bias)
    if arch == "pnn":
        return PNNArch(names, k, num_dense, cfg.mlp, cfg.dropout, init_bias, cfg.pnn_product)
    return LRArch(names, k, num_dense, init_bias, *linear)
