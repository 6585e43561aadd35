"""Held-out importance of every field: how much the loss rises when the arch stops seeing which id it got.

Field f's importance is the increase of the mean held-out loss when every sample's pooled embedding of f is
replaced by the mean of that embedding over the held-out rows (the arch keeps its input scale, but loses
what distinguishes one id from another):

    I_f = mean_s ℓ(x_s with e_f(s) := ē_f) − mean_s ℓ(x_s),

with the trained arch in eval mode. The measure needs no gradient and is free of the table's scale, its
vocabulary size and its optimiser's per-row steps: a noise field that the arch memorised on training rows
helps no held-out row (I_f ≈ 0 or below), and a field of a million rare ids counts as much as its
held-out samples say. :mod:`recdim.layout.field_budget` turns it into per-field budgets.

The per-sample differences also give each I_f a standard error; allocation reads the lower confidence bound
I_f − z · SE_f (``prune.field_confidence`` = z, default 0), so that with z > 0 a field whose held-out
evidence is within noise of zero keeps nothing rather than a share proportional to chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.search.importance import pooled_lookup, search_split_batches

if TYPE_CHECKING:
    from recdim.config import PruneConfig
    from recdim.search.method import SearchedModel


def field_allocation(prune: "PruneConfig", default: str) -> bool:
    """Whether ``prune.allocation`` asks for field allocation, ``default`` being the method's own rule
    (what ``"method"`` means for it: ``"field"`` or ``"global"``)."""
    return (default if prune.allocation == "method" else prune.allocation) == "field"


def _losses(logits: torch.Tensor, labels: torch.Tensor, binary: bool) -> torch.Tensor:
    if binary:
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (logits - labels) ** 2


@dataclass(frozen=True)
class FieldAblation:
    """Per-field held-out importance with its evidence.

    Args:
        mean: ``{feature: I_f}``, the mean per-sample loss rise.
        stderr: ``{feature: SE_f}``, the standard error of that mean (sample std of the per-sample rises / √n).
        n: held-out samples.
    """

    mean: Dict[str, float]
    stderr: Dict[str, float]
    n: int

    def lower_bound(self, z: float) -> Dict[str, float]:
        """``{feature: I_f − z · SE_f}`` (z = 0: the means)."""
        return {f: m - z * self.stderr[f] for f, m in self.mean.items()}


def field_ablation_stats(
    arch: nn.Module,
    values: Mapping[str, torch.Tensor],
    batches: Iterable[Tuple[object, int]],
    features: Sequence[str],
    pooling: str = "sum",
    binary: bool = True,
    reads_ids: bool = False,
) -> FieldAblation:
    """``I_f`` and its standard error for every feature over ``batches`` (two passes: the mean pooled rows,
    then the losses).

    Args:
        arch: the trained interaction arch (called as in :class:`~recdim.models.rec_model.RecModel`); run in
            eval mode under ``no_grad``, its parameters untouched.
        values: ``{feature: [N, K_f]}`` the effective weights the arch saw (for DNIS ``e ⊙ alpha``).
        batches: ``(batch, n_valid)`` pairs, re-iterable (:class:`~recdim.data.loader.EvalLoader`); rows past
            ``n_valid`` are padding and count for nothing.
        features: the provider's feature order (the arch's input order).
        pooling: the model's pooling (``model.pooling``).
        binary: logistic loss (CTR) when True, squared error (ratings) otherwise.
        reads_ids: the arch also takes the batch's ids (:attr:`InteractionArch.reads_ids`).

    Returns:
        :class:`FieldAblation`, in loss units (per held-out sample); ``I_f`` may be negative.

    Example::

        stats = field_ablation_stats(model.arch, tables, EvalLoader(rows, names, 4096), names)
        stats.mean        # {"user": 0.021, "noise": -0.0003, ...}
        stats.lower_bound(2.0)
    """
    widths = [values[f].size(1) for f in features]
    starts = [sum(widths[:j]) for j in range(len(features))]
    was_training = arch.training
    arch.eval()
    try:
        with torch.no_grad():
            total = torch.zeros(sum(widths), dtype=torch.float64)
            n = 0
            for batch, n_valid in batches:
                pooled, _ = pooled_lookup(values, batch.sparse_features, features, pooling)
                total += pooled[:n_valid].double().sum(0)
                n += n_valid
            if n == 0:
                raise ValueError("field importance needs at least one held-out row")
            mean = (total / n).float()
            sums = torch.zeros(len(features), dtype=torch.float64)
            squares = torch.zeros(len(features), dtype=torch.float64)
            for batch, n_valid in batches:
                kjt = batch.sparse_features
                pooled, _ = pooled_lookup(values, kjt, features, pooling)
                pooled = pooled.float()
                dense, labels = batch.dense_features.float(), batch.labels.float()[:n_valid]

                def losses(x: torch.Tensor) -> torch.Tensor:
                    kt = KeyedTensor(keys=list(features), length_per_key=widths, values=x)
                    logits = arch(dense, kt, kjt) if reads_ids else arch(dense, kt)
                    return _losses(logits[:n_valid], labels, binary).double()

                base = losses(pooled)
                for j in range(len(features)):
                    x = pooled.clone()
                    x[:, starts[j] : starts[j] + widths[j]] = mean[starts[j] : starts[j] + widths[j]]
                    rise = losses(x) - base
                    sums[j] += rise.sum()
                    squares[j] += (rise * rise).sum()
    finally:
        arch.train(was_training)
    means = sums / n
    var = (squares - n * means * means).clamp_min(0.0) / max(n - 1, 1)
    return FieldAblation(
        mean={f: float(means[j]) for j, f in enumerate(features)},
        stderr={f: math.sqrt(float(var[j]) / n) for j, f in enumerate(features)},
        n=n,
    )


def search_split_field_importance(
    searched: "SearchedModel", values: Mapping[str, torch.Tensor], confidence: float = 0.0
) -> Dict[str, float]:
    """The importance a field allocation reads: :func:`field_ablation_stats` of a rebuilt search run over its
    search split, at its lower confidence bound ``I_f − confidence · SE_f``.

    Args:
        searched: the search run (:func:`recdim.prune.derive.load_searched`), with its arch.
        values: ``{feature: [N, K]}`` its effective weights.
        confidence: z of the bound (``prune.field_confidence``; 0: the means).

    Raises:
        ValueError: when ``searched`` carries no arch module.
    """
    loader, binary, reads_ids = search_split_batches(searched)
    feats: List[str] = list(searched.features)
    pooling = searched.cfg.model.pooling
    stats = field_ablation_stats(searched.arch, values, loader, feats, pooling, binary, reads_ids)
    return stats.lower_bound(confidence)
