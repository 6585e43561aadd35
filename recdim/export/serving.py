"""Exporting a trained tiered model, and serving one from its artifact.

The serving model is ``RecModel(TieredEmbeddingProvider, arch)``: the same provider contract and arch
as in training, with the tier tables, remaps and column maps rebuilt from the artifact's packed tables
(values decoded to float32: a float16 / int8 artifact serves its rounded values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recdim.config import ModelConfig
from recdim.data.schema import LabelKind, Schema
from recdim.export.artifact import ARCH_FILE, Artifact, ArtifactError, read_artifact, write_artifact
from recdim.export.dataset_record import DatasetRecord
from recdim.layout.tier_plan import TablePlan
from recdim.layout.tier_values import tier_values
from recdim.models.rec_model import RecModel
from recdim.modules.tiered import TieredEmbeddingProvider


def export_model(
    path: Union[str, Path],
    model: RecModel,
    model_cfg: ModelConfig,
    schema: Schema,
    extra: Optional[Mapping[str, Any]] = None,
    dataset: Optional[DatasetRecord] = None,
    values_dtype: str = "float32",
) -> Dict[str, Any]:
    """Writes an unsharded model whose provider is a :class:`TieredEmbeddingProvider` as an artifact.

    Args:
        path: the artifact directory.
        model: provider + arch (gather a sharded model's state to one process first).
        model_cfg: the arch config.
        schema: the dataset's feature schema.
        extra: JSON-ready metadata (metrics, run config).
        dataset: the training dataset's encoding (raw-row serving), or None.
        values_dtype: ``"float32"`` (exact), ``"float16"`` or ``"int8"`` (row-wise) stored values.

    Returns:
        The manifest written.

    Example::

        export_model("out/model", model, cfg.model, dataset.schema, extra={"test": results["test"]})
    """
    provider = model.provider
    if not isinstance(provider, TieredEmbeddingProvider):
        raise TypeError(
            f"export_model needs a TieredEmbeddingProvider, got {type(provider).__name__}; "
            "use export_masked for a pruned uniform model"
        )
    return write_artifact(
        path,
        provider.plans,
        provider.tier_weights(),
        model.arch.state_dict(),
        model_cfg,
        schema,
        extra,
        dataset,
        values_dtype,
    )


def export_masked(
    path: Union[str, Path],
    plans: Sequence[TablePlan],
    weights: Mapping[str, torch.Tensor],
    arch: nn.Module,
    model_cfg: ModelConfig,
    schema: Schema,
    extra: Optional[Mapping[str, Any]] = None,
    dataset: Optional[DatasetRecord] = None,
    values_dtype: str = "float32",
) -> Dict[str, Any]:
    """Writes a pruned K-wide model as an artifact: tiers hold ``weights[table] ⊙ mask`` ([N, K] each).

    Example::

        export_masked("out/model", plans, {"t_user": w_user, ...}, model.arch, cfg.model, schema)
    """
    values = {p.name: tier_values(p, weights[p.name].detach().cpu().float()) for p in plans}
    return write_artifact(path, plans, values, arch.state_dict(), model_cfg, schema, extra, dataset, values_dtype)


class ServingModel(nn.Module):
    """A tiered model loaded from an artifact, in eval mode on the CPU.

    Args:
        artifact: a verified artifact (:func:`read_artifact`).

    Call:
        dense (Tensor): [B, D].
        sparse (KeyedJaggedTensor): keys ``features``.

    Returns:
        Tensor: [B] raw scores (logits for binary labels, ratings otherwise).

    Example::

        serving = load_serving_model("out/model")
        p = serving.predict(batch)          # [B] click probabilities or ratings
    """

    def __init__(self, artifact: Artifact) -> None:
        super().__init__()
        from recdim.models.factory import build_arch

        self.artifact = artifact
        self.features = list(artifact.features)
        self.label = artifact.schema.label
        provider = TieredEmbeddingProvider(
            artifact.plans, artifact.multi_valued, artifact.model.pooling, artifact.is_weighted, torch.device("cpu")
        )
        provider.load_tier_values(artifact.tier_values)
        rows = {f: artifact.schema[f].num_embeddings for f in self.features}
        arch = build_arch(artifact.model, self.features, int(artifact.manifest["num_dense"]), 0.0, rows)
        try:
            arch.load_state_dict(artifact.arch_state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0:2]
            raise ArtifactError(
                f"{artifact.path / ARCH_FILE}: does not fit the arch the manifest describes "
                f"(model {artifact.model.arch}, {' '.join(first)})"
            ) from None
        self.model = RecModel(provider, arch)
        self.eval()

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return self.model(dense, sparse)

    @torch.no_grad()
    def predict(self, batch: Batch) -> torch.Tensor:
        """[B] predictions: probabilities (sigmoid of the logits) for binary labels, ratings otherwise."""
        scores = self(batch.dense_features, batch.sparse_features)
        return torch.sigmoid(scores) if self.label == LabelKind.BINARY else scores


def load_serving_model(path: Union[str, Path]) -> ServingModel:
    """Reads and verifies the artifact at ``path`` and builds its serving model."""
    return ServingModel(read_artifact(path))
