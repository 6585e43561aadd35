"""Held-out importance of every embedding value: what the loss would lose if the value were zeroed.

Magnitude pruning ranks ``|v|``, which mixes signal with the optimiser's per-row scale and with how often
an id was updated (rare ids keep large values; see docs/methods.md). The ``fisher`` score ranks the
Optimal-Brain-Damage estimate of the loss increase when ``v`` is set to zero,

    ΔL(i, k) ≈ ½ · H(i, k) · v(i, k)²,   H(i, k) ≈ Σ_samples (∂ℓ_s / ∂v(i, k))²   (empirical Fisher),

summed over the rows of a held-out split (the search split), with the trained arch in eval mode. A value
the arch ignores (a noise field, a column the interaction does not read) has small per-sample gradients
however large it is; an id seen often accumulates the evidence of each of its samples.

The lookup here is a plain one (``values[f][ids]`` pooled per bag, as the provider's effective weights
define it), so the score needs no sharded table; :func:`pooled_lookup` is checked against the providers in
``tests/search/test_importance.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

if TYPE_CHECKING:
    from recdim.search.method import SearchedModel

Occurrences = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(ids, bags, weights)`` of one feature: each (bag, id) pair once, with its summed pooling weight."""


def pooled_lookup(
    values: Mapping[str, torch.Tensor], kjt: KeyedJaggedTensor, features: Sequence[str], pooling: str = "sum"
) -> Tuple[torch.Tensor, Dict[str, Occurrences]]:
    """Pools ``values[f][ids]`` per bag, as the providers do.

    Args:
        values: ``{feature: [N, K]}`` effective per-id weights.
        kjt: one batch, keys ``features`` (any order); weights, when present, scale each value.
        features: output order.
        pooling: ``sum`` or ``mean`` (a bag's weighted sum divided by its length; an empty bag gives 0).

    Returns:
        ``([B, F * K] pooled, {feature: (ids, bags, weights)})``: every (bag, id) pair once, its weight the
        sum of its occurrences' pooling weights, so ``∂out[bag] / ∂values[f][id] = weight``.

    Example::

        out, occ = pooled_lookup({"user": w_user, "item": w_item}, kjt, ["user", "item"])   # [B, 2K]
    """
    if pooling not in ("sum", "mean"):
        raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
    per = kjt.to_dict()
    outs: List[torch.Tensor] = []
    occ: Dict[str, Occurrences] = {}
    for f in features:
        jt, table = per[f], values[f]
        ids, lengths = jt.values().long(), jt.lengths().long()
        b = lengths.numel()
        bags = torch.repeat_interleave(torch.arange(b), lengths)
        w = jt.weights().float() if jt.weights_or_none() is not None else torch.ones(ids.numel())
        if pooling == "mean":
            w = w / lengths.clamp(min=1).float()[bags]
        n = table.size(0)
        key, inverse = torch.unique(bags * n + ids, return_inverse=True)
        pair_w = torch.zeros(key.numel()).index_add_(0, inverse, w)
        pair_bags, pair_ids = key // n, key % n
        out = torch.zeros(b, table.size(1), dtype=table.dtype)
        out.index_add_(0, pair_bags, table[pair_ids] * pair_w[:, None])
        outs.append(out)
        occ[f] = (pair_ids, pair_bags, pair_w)
    return torch.cat(outs, dim=1), occ


def fisher_scores(
    arch: nn.Module,
    values: Mapping[str, torch.Tensor],
    batches: Iterable[Tuple[object, int]],
    features: Sequence[str],
    pooling: str = "sum",
    binary: bool = True,
    reads_ids: bool = False,
) -> Dict[str, torch.Tensor]:
    """``½ · v² · Σ_samples (∂ℓ_s / ∂v)²`` for every value of every feature, over ``batches``.

    Args:
        arch: the trained interaction arch (called as in :class:`~recdim.models.rec_model.RecModel`); run in
            eval mode, its parameters untouched.
        values: ``{feature: [N, K]}`` the effective weights the arch saw (for DNIS ``e ⊙ alpha``).
        batches: ``(batch, n_valid)`` pairs (:class:`~recdim.data.loader.EvalLoader`); rows past ``n_valid``
            are padding and count for nothing.
        features: the provider's feature order (the arch's input order).
        pooling: the model's pooling (``model.pooling``).
        binary: logistic loss (CTR) when True, squared error (ratings) otherwise.
        reads_ids: the arch also takes the batch's ids (:attr:`InteractionArch.reads_ids`).

    Returns:
        ``{feature: [N, K]}`` non-negative scores (float32); an id no held-out sample reads scores 0.

    Example::

        scores = fisher_scores(model.arch, provider.effective_weights(tables), EvalLoader(search, names, 4096),
                               names)
        masks = magnitude_masks(scores, cr=4.0)     # keeps the values whose loss the held-out rows feel most
    """
    was_training = arch.training
    arch.eval()
    fisher = {f: torch.zeros_like(values[f], dtype=torch.float32) for f in features}
    K = [values[f].size(1) for f in features]
    offsets = [0]
    for k in K:
        offsets.append(offsets[-1] + k)
    try:
        for batch, n_valid in batches:
            kjt = batch.sparse_features
            pooled, occ = pooled_lookup(values, kjt, features, pooling)
            pooled = pooled.detach().float().requires_grad_(True)
            kt = KeyedTensor(keys=list(features), length_per_key=K, values=pooled)
            dense = batch.dense_features.float()
            logits = arch(dense, kt, kjt) if reads_ids else arch(dense, kt)
            labels = batch.labels.float()
            keep = torch.zeros_like(labels)
            keep[:n_valid] = 1.0
            if binary:
                per_sample = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
            else:
                per_sample = (logits - labels) ** 2
            (grad,) = torch.autograd.grad((per_sample * keep).sum(), pooled)
            for j, f in enumerate(features):
                ids, bags, w = occ[f]
                g = grad[bags, offsets[j] : offsets[j + 1]] * w[:, None]
                fisher[f].index_add_(0, ids, g * g)
    finally:
        arch.train(was_training)
    return {f: 0.5 * values[f].detach().float() ** 2 * fisher[f] for f in features}


def search_split_batches(searched: "SearchedModel") -> Tuple[Iterable[Tuple[object, int]], bool, bool]:
    """The held-out rows a score of ``searched`` runs over: ``(batches, binary, reads_ids)``.

    The batches are the search split (``search.split`` of its config: the rows DNIS / AutoSrh's alpha learned
    on; for a method that carves none, such as magnitude pruning, the same rows, which it trained on) as
    :class:`~recdim.data.loader.EvalLoader` ``(batch, n_valid)`` pairs; ``binary`` says the label is a click
    (logistic loss), ``reads_ids`` that the arch also takes the batch's ids.

    Raises:
        ValueError: when ``searched`` carries no arch module.
    """
    from recdim.data.loader import EvalLoader
    from recdim.data.schema import LabelKind
    from recdim.data.search_split import carve_search_split

    if searched.arch is None:
        raise ValueError(f"{searched.search_dir}: a held-out score needs the trained arch (load_searched rebuilds it)")
    cfg, ds = searched.cfg, searched.dataset
    split = cfg.search.split
    _, rows = carve_search_split(ds.load_split("train", searched.features), split.fraction, split.seed)
    loader = EvalLoader(rows, searched.features, cfg.train.eval_batch_size, weighted=ds.schema.is_weighted)
    binary = ds.schema.label == LabelKind.BINARY
    return loader, binary, bool(getattr(searched.arch, "reads_ids", False))


def search_split_scores(searched: "SearchedModel", values: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """:func:`fisher_scores` of a rebuilt search run over its search split (:func:`search_split_batches`).

    Args:
        searched: the search run (:func:`recdim.prune.derive.load_searched`), with its arch.
        values: ``{feature: [N, K]}`` its effective weights.

    Raises:
        ValueError: when ``searched`` carries no arch module.
    """
    loader, binary, reads_ids = search_split_batches(searched)
    cfg = searched.cfg
    return fisher_scores(searched.arch, values, loader, searched.features, cfg.model.pooling, binary, reads_ids)
