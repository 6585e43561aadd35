"""Evaluation metrics computed globally over a whole split, on one rank or gathered across ranks.

AUC and logloss are computed once over every example of a split (never averaged over batches); a
:class:`MetricAccumulator` collects a rank's outputs and labels, :func:`gather` brings every rank's
part together so that all ranks report the same global number. Ranking metrics (Recall / MRR / NDCG
at k) are computed per user and averaged over every user of a split (:mod:`recdim.train.ranking`).
All arithmetic is in float64.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from scipy.special import expit
from scipy.stats import rankdata

from recdim.data.schema import LabelKind

ArrayLike = Union[torch.Tensor, np.ndarray]


def _as_f64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _check_pair(labels: np.ndarray, values: np.ndarray) -> None:
    if labels.shape != values.shape:
        raise ValueError(f"labels and predictions differ in length: {labels.size} vs {values.size}")
    if labels.size == 0:
        raise ValueError("no examples to evaluate")


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Exact ROC AUC, ties counted as one half (Mann-Whitney U with average ranks).

    Equal to ``sklearn.metrics.roc_auc_score``; O(N log N).

    Args:
        labels: [N] in {0, 1}.
        scores: [N] any monotone score (logits or probabilities).

    Returns:
        float: P(score of a random positive > score of a random negative) + 0.5 P(tie).

    Raises:
        ValueError: labels outside {0, 1}, mismatched lengths, or only one class present.

    Example::

        roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])  # 0.75
    """
    y = _as_f64(labels)
    s = _as_f64(scores)
    _check_pair(y, s)
    if not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("roc_auc needs labels in {0, 1}")
    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc is undefined when only one class is present")
    ranks = rankdata(s, method="average")
    rank_sum = float(ranks[y == 1.0].sum())
    return (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)


def log_loss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps].

    Args:
        labels: [N] in [0, 1].
        probs: [N] predicted probabilities of the positive class.
        eps: clipping bound that keeps the log finite.

    Returns:
        float: -mean(y log p + (1 - y) log(1 - p)).

    Example::

        log_loss([1, 0], [0.9, 0.2])  # (-ln 0.9 - ln 0.8) / 2
    """
    y = _as_f64(labels)
    p = np.clip(_as_f64(probs), eps, 1.0 - eps)
    _check_pair(y, p)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def mse(labels: ArrayLike, preds: ArrayLike) -> float:
    """Mean squared error.

    Args:
        labels: [N] targets.
        preds: [N] predictions.

    Returns:
        float: mean((pred - label)^2).

    Example::

        mse([3.0, 4.0], [2.5, 4.0])  # 0.125
    """
    y = _as_f64(labels)
    p = _as_f64(preds)
    _check_pair(y, p)
    return float(np.mean((p - y) ** 2))


def rmse(labels: ArrayLike, preds: ArrayLike) -> float:
    """Root mean squared error, sqrt(:func:`mse`).

    Example::

        rmse([3.0, 4.0], [2.0, 4.0])  # sqrt(0.5)
    """
    return math.sqrt(mse(labels, preds))


def compute_metrics(label_kind: LabelKind, labels: ArrayLike, outputs: ArrayLike) -> Dict[str, float]:
    """The split's metrics from the arch's raw outputs.

    Args:
        label_kind: ``BINARY`` (outputs are logits) or ``RATING`` (outputs are predicted ratings).
        labels: [N] labels of the whole split.
        outputs: [N] raw arch outputs for the same rows.

    Returns:
        Dict[str, float]: ``{"auc", "logloss"}`` for binary labels (sigmoid applied to the logits),
        ``{"mse", "rmse"}`` for ratings.

    Raises:
        ValueError: for binary labels with only one class present (AUC is undefined).

    Example::

        compute_metrics(LabelKind.BINARY, labels, logits)  # {"auc": 0.79, "logloss": 0.46}
    """
    kind = LabelKind(label_kind)
    y = _as_f64(labels)
    z = _as_f64(outputs)
    if kind is LabelKind.BINARY:
        return {"auc": roc_auc(y, z), "logloss": log_loss(y, expit(z))}
    m = mse(y, z)
    return {"mse": m, "rmse": math.sqrt(m)}


def ranking_metrics_per_user(hits: torch.Tensor, num_relevant: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Recall, MRR and NDCG at every k, per user, from the relevance of each user's ranked list.

    With ``hits[u, r]`` = 1 when the item at rank r + 1 is relevant and n_u relevant items in all:

    - Recall@k = (relevant items in the top k) / n_u;
    - MRR@k = 1 / (rank of the first relevant item) if it is within the top k, else 0;
    - NDCG@k = sum_{r <= k} hits_r / log2(r + 1), divided by its ideal value sum_{r <= min(k, n_u)} 1 / log2(r + 1).

    Args:
        hits: [U, R] relevance of the top R ranked items (R >= max(ks); bool or 0/1).
        num_relevant: [U] relevant items of each user (>= 1, at least the hits in ``hits``).
        ks: cut-offs, each <= R.

    Returns:
        Tensor: [U, 3 * len(ks)] float64, columns in the order of :func:`ranking_metric_names`.

    Example::

        hits = torch.tensor([[False, True, False]])
        ranking_metrics_per_user(hits, torch.tensor([2]), [1, 3])
        # recall@1 0, recall@3 0.5, mrr@1 0, mrr@3 0.5, ndcg@1 0, ndcg@3 (1 / log2 3) / (1 + 1 / log2 3)
    """
    h = hits.to(torch.float64)
    n = num_relevant.to(torch.float64).reshape(-1, 1)
    if h.dim() != 2 or h.size(0) != n.size(0) or max(ks) > h.size(1):
        raise ValueError(f"hits must be [U, R >= {max(ks)}] with U = {n.size(0)}, got {list(h.shape)}")
    if (n < 1).any():
        raise ValueError("every user needs at least one relevant item")
    ranks = torch.arange(1, h.size(1) + 1, dtype=torch.float64)
    discount = 1.0 / torch.log2(ranks + 1.0)  # [R]
    first = torch.where(h.any(1), h.argmax(1).to(torch.float64) + 1.0, torch.full_like(n[:, 0], math.inf))
    ideal = torch.cumsum(discount, 0)  # ideal[m - 1] = IDCG with m relevant items in reach
    cols: Dict[str, List[torch.Tensor]] = {"recall": [], "mrr": [], "ndcg": []}
    for k in ks:
        cols["recall"].append(h[:, :k].sum(1) / n[:, 0])
        cols["mrr"].append(torch.where(first <= k, 1.0 / first, torch.zeros_like(first)))
        reach = torch.clamp(n[:, 0], max=k).long() - 1
        cols["ndcg"].append((h[:, :k] * discount[:k]).sum(1) / ideal[reach])
    return torch.stack([c for name in ("recall", "mrr", "ndcg") for c in cols[name]], dim=1)


def ranking_metric_names(ks: Sequence[int]) -> List[str]:
    """``["recall@k" for k in ks] + ["mrr@k" ...] + ["ndcg@k" ...]``, the columns of
    :func:`ranking_metrics_per_user`."""
    return [f"{name}@{k}" for name in ("recall", "mrr", "ndcg") for k in ks]


def gather(tensor: torch.Tensor, group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Concatenates every rank's tensor along dim 0, in rank order; lengths may differ per rank.

    Sizes are all-gathered first, each part is padded to the longest, all-gathered, and trimmed. With no
    initialised process group (or a world of one) the input comes back unchanged. NCCL groups
    communicate through the current CUDA device, others (gloo) through CPU.

    Args:
        tensor: [N_r, ...] this rank's part; trailing dims must agree across ranks.
        group: process group; ``None`` is the default group.

    Returns:
        Tensor: [sum_r N_r, ...] on ``tensor``'s device, identical on every rank.

    Example::

        all_labels = gather(local_labels)  # every rank sees every rank's labels
    """
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    world = dist.get_world_size(group)
    if world == 1:
        return tensor
    if dist.get_backend(group) == dist.Backend.NCCL:
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    local = tensor.to(device).contiguous()
    size = torch.tensor([local.size(0)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    lengths: List[int] = [int(s.item()) for s in sizes]
    longest = max(lengths)
    padded = local.new_zeros((longest,) + tuple(local.shape[1:]))
    padded[: local.size(0)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, lengths)], dim=0).to(tensor.device)


class MetricAccumulator:
    """Collects one rank's outputs and labels over a split, then computes the global metrics.

    Batches are stored on CPU in float64; :meth:`compute` gathers all ranks' parts (see
    :func:`gather`), so every rank returns the same numbers.

    Args:
        label_kind: how to read outputs (logits or ratings), see :func:`compute_metrics`.

    Example::

        acc = MetricAccumulator(LabelKind.BINARY)
        for batch in loader:
            acc.update(model(batch.dense_features, batch.sparse_features), batch.labels)
        metrics = acc.compute()  # {"auc": ..., "logloss": ...}
    """

    def __init__(self, label_kind: LabelKind) -> None:
        self.label_kind = LabelKind(label_kind)
        self._outputs: List[torch.Tensor] = []
        self._labels: List[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds a batch.

        Args:
            outputs: [B] raw arch outputs.
            labels: [B] labels.
        """
        o = outputs.detach().reshape(-1).to("cpu", torch.float64)
        y = labels.detach().reshape(-1).to("cpu", torch.float64)
        if o.numel() != y.numel():
            raise ValueError(f"outputs and labels differ in length: {o.numel()} vs {y.numel()}")
        self._outputs.append(o)
        self._labels.append(y)

    def reset(self) -> None:
        """Forgets every batch seen so far."""
        self._outputs.clear()
        self._labels.clear()

    @property
    def num_examples(self) -> int:
        """Examples collected on this rank."""
        return sum(t.numel() for t in self._labels)

    def local(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """This rank's (outputs [N], labels [N]), float64 on CPU."""
        if not self._labels:
            empty = torch.zeros(0, dtype=torch.float64)
            return empty, empty.clone()
        return torch.cat(self._outputs), torch.cat(self._labels)

    def compute(self, group: Optional[dist.ProcessGroup] = None) -> Dict[str, float]:
        """Global metrics over every rank's examples (a collective call when a group is initialised).

        Args:
            group: process group to gather over; ``None`` is the default group (if initialised).

        Returns:
            Dict[str, float]: see :func:`compute_metrics`.
        """
        outputs, labels = self.local()
        both = gather(torch.stack([outputs, labels], dim=1), group)  # one collective for both
        return compute_metrics(self.label_kind, both[:, 1], both[:, 0])
