"""Top-k recommendation by full ranking: every evaluated user against every candidate item.

For a split (validation or test) the evaluated users are those with a held-out positive (label 1) in
it. Each is scored against every candidate item (every item id with a training row, the OOV id
excluded) by the model itself: the (user, item) rows are assembled from the data's per-user and
per-item feature tables (:class:`~recdim.data.candidates.CandidateRows`) and go through the provider
and the arch like any batch, so any provider (uniform, soft selection, thresholds, candidate dims,
tiers) is ranked the same way. Items the user has rows with in earlier splits (train; train and
validation when scoring test) are masked out; the user's held-out positives among the remaining
candidates are the relevant items. Recall / MRR / NDCG at each k
(:func:`~recdim.train.metrics.ranking_metrics_per_user`) are averaged over the evaluated users of all
ranks. Ties in score are broken by candidate order (stable sort), so results are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from recdim.config import TrainConfig
from recdim.data.candidates import CandidateRows
from recdim.data.loader import make_batch
from recdim.data.negatives import NegativeSamplingLoader
from recdim.data.prepared import SPLITS, SplitArrays
from recdim.data.schema import LabelKind, Schema
from recdim.train.metrics import gather, ranking_metric_names, ranking_metrics_per_user


class UserLists:
    """Items per user, from (user, item) pairs, as sorted runs for fast per-user lookup.

    Args:
        users: [N] user ids.
        items: [N] item positions (any int64 values).

    Example::

        lists = UserLists(np.array([2, 0, 2]), np.array([5, 1, 3]))
        lists.dense(np.array([2, 1]), 6)  # [[F, F, F, T, F, T], [F] * 6]
    """

    def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
        order = np.lexsort((items, users))
        self.users = np.asarray(users, np.int64)[order]
        self.items = np.asarray(items, np.int64)[order]

    def dense(self, users: np.ndarray, width: int) -> np.ndarray:
        """[U, width] bool: entry (j, i) is set when ``users[j]`` has item ``i``."""
        lo = np.searchsorted(self.users, users, side="left")
        hi = np.searchsorted(self.users, users, side="right")
        lengths = hi - lo
        out = np.zeros((users.size, width), bool)
        if lengths.sum():
            rows = np.repeat(np.arange(users.size), lengths)
            at = np.arange(int(lengths.sum())) + np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
            out[rows, self.items[at]] = True
        return out


class RankingData:
    """What every split's full ranking shares: the candidate items, the feature tables and each split's
    (user, item, label) rows.

    Args:
        splits: ``train``, ``val`` and ``test`` arrays over the model's features.
        candidates: feature tables over those splits.
        schema: the dataset schema (OOV ids of the user and item fields).

    Example::

        data = RankingData(splits, CandidateRows(list(splits.values()), names, "user_id", "item_id"), schema)
        data.items  # candidate item ids
    """

    def __init__(self, splits: Mapping[str, SplitArrays], candidates: CandidateRows, schema: Schema) -> None:
        self.candidates = candidates
        self.user_oov = schema[candidates.user_field].oov_id
        self.item_oov = schema[candidates.item_field].oov_id
        self.pairs: Dict[str, tuple] = {}
        for name in SPLITS:
            s = splits[name]
            self.pairs[name] = (
                s.sparse[candidates.user_field].values,
                s.sparse[candidates.item_field].values,
                s.labels > 0.5,
            )
        train_items = np.unique(self.pairs["train"][1])
        self.items = train_items[train_items != self.item_oov]
        self.position = np.full(int(max(self.items.max(initial=0), self.item_oov)) + 1, -1, np.int64)
        self.position[self.items] = np.arange(self.items.size)

    def positions(self, items: np.ndarray) -> np.ndarray:
        """[N] candidate position of each item id, -1 for an item that is not a candidate."""
        out = np.full(items.shape, -1, np.int64)
        inside = items < self.position.size
        out[inside] = self.position[items[inside]]
        return out


class RankingEvaluator:
    """Full-ranking Recall / MRR / NDCG at k of one split (see the module docstring).

    Ranks step together (sharded lookups are collective): the evaluated users are cut into equal
    per-rank parts (the last padded with copies of the first user, whose results are dropped), and each
    forward scores ``max(1, rows_per_batch // I)`` users against all I candidates.

    Args:
        data: candidates, feature tables and the splits' rows.
        split: the split to score (``val`` or ``test``); the earlier splits are masked.
        ks: cut-offs.
        feature_names: KJT keys, in the model's order.
        rows_per_batch: (user, item) rows per forward on each rank.
        rank: this rank.
        world_size: number of ranks.
        weighted: emit KJT weights.

    Example::

        val = RankingEvaluator(data, "val", (1, 5, 10), names, rows_per_batch=65536)
        val.evaluate(model, torch.device("cpu"))  # {"recall@1": ..., "ndcg@10": ..., "users": 912.0}
        test = val.for_split("test")
    """

    def __init__(
        self,
        data: RankingData,
        split: str,
        ks: Sequence[int],
        feature_names: Sequence[str],
        rows_per_batch: int,
        rank: int = 0,
        world_size: int = 1,
        weighted: bool = False,
    ) -> None:
        if split not in SPLITS or split == "train":
            raise ValueError(f"ranking evaluates 'val' or 'test', got {split!r}")
        self.data, self.split, self.ks = data, split, tuple(int(k) for k in ks)
        self.feature_names = list(feature_names)
        self.rows_per_batch, self.rank, self.world_size, self.weighted = rows_per_batch, rank, world_size, weighted
        earlier = SPLITS[: SPLITS.index(split)]
        mask_users = np.concatenate([data.pairs[s][0] for s in earlier])
        mask_pos = data.positions(np.concatenate([data.pairs[s][1] for s in earlier]))
        keep = mask_pos >= 0
        self.masked = UserLists(mask_users[keep], mask_pos[keep])
        users, items, positive = data.pairs[split]
        pos = data.positions(items)
        known_user = (users != data.user_oov) & data.candidates.known(data.candidates.user_field, users)
        candidate = positive & (pos >= 0) & known_user
        seen = np.zeros(users.size, bool)
        if candidate.any():
            idx = np.flatnonzero(candidate)
            seen[idx] = _has_pair(self.masked, users[idx], pos[idx])
        target = candidate & ~seen
        self.targets = UserLists(users[target], pos[target])
        self.users = np.unique(users[target])
        self.counts = {
            "users": int(self.users.size),
            "positives": int(positive.sum()),
            "relevant": int(target.sum()),
            "cold_positives": int((positive & (pos < 0)).sum()),
            "oov_user_positives": int((positive & ~known_user).sum()),
            "masked_positives": int((candidate & seen).sum()),
        }

    def for_split(self, split: str) -> "RankingEvaluator":
        """The same evaluator on another split."""
        if split == self.split:
            return self
        return RankingEvaluator(
            self.data,
            split,
            self.ks,
            self.feature_names,
            self.rows_per_batch,
            self.rank,
            self.world_size,
            self.weighted,
        )

    @property
    def metric_names(self) -> List[str]:
        return ranking_metric_names(self.ks)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> Dict[str, float]:
        """Mean metrics over every evaluated user of every rank (identical on every rank), plus ``users``.

        Args:
            model: called as ``model(dense, kjt) -> [B]`` scores (higher ranks first).
            device: where batches go.
        """
        if not self.users.size:
            raise ValueError(f"split {self.split!r}: no user has a held-out positive among the candidates")
        model.eval()
        items = self.data.items
        n_items = items.size
        kmax = min(max(self.ks), n_items)
        part = math.ceil(self.users.size / self.world_size)
        local = self.users[self.rank * part : (self.rank + 1) * part]
        n_valid = local.size
        local = np.concatenate([local, np.full(part - n_valid, self.users[0], np.int64)])
        per_forward = max(1, self.rows_per_batch // n_items)
        out: List[torch.Tensor] = []
        for lo in range(0, part, per_forward):
            users = local[lo : lo + per_forward]
            rows = self.data.candidates.rows(np.repeat(users, n_items), np.tile(items, users.size))
            batch = make_batch(rows, self.feature_names, np.arange(len(rows)), self.weighted).to(device)
            scores = model(batch.dense_features, batch.sparse_features).reshape(users.size, n_items).float().cpu()
            scores[torch.from_numpy(self.masked.dense(users, n_items))] = -math.inf
            relevant = torch.from_numpy(self.targets.dense(users, n_items))
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :kmax]
            hits = torch.zeros(users.size, max(self.ks), dtype=torch.bool)
            hits[:, :kmax] = relevant.gather(1, order)
            out.append(ranking_metrics_per_user(hits, relevant.sum(1), self.ks))
        per_user = torch.cat(out)[:n_valid] if out else torch.zeros(0, 3 * len(self.ks), dtype=torch.float64)
        total = gather(per_user)
        metrics = dict(zip(self.metric_names, total.mean(0).tolist()))
        metrics["users"] = float(total.size(0))
        return metrics


def _has_pair(lists: UserLists, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[N] bool: whether each (users[j], items[j]) is among the pairs of ``lists``."""
    width = int(max(lists.items.max(initial=0), items.max(initial=0))) + 1
    keys = lists.users * width + lists.items  # sorted: lists are ordered by (user, item)
    query = users * width + items
    at = np.searchsorted(keys, query).clip(max=max(0, keys.size - 1))
    return keys[at] == query if keys.size else np.zeros(query.size, bool)


@dataclass
class TopKTask:
    """The training loader and the validation evaluator of ``train.task = "topk"``.

    Args:
        train_loader: labelled training rows plus sampled negatives.
        val: full ranking of the validation split (``val.for_split("test")`` ranks test).
    """

    train_loader: NegativeSamplingLoader
    val: RankingEvaluator


def build_topk(
    cfg: TrainConfig,
    schema: Schema,
    features: Sequence[str],
    splits: Mapping[str, SplitArrays],
    rank: int = 0,
    world_size: int = 1,
) -> TopKTask:
    """Builds the top-k task of a prepared dataset: feature tables, negatives loader, validation ranking.

    Args:
        cfg: the training config (``ranking``, ``batch_size``, ``eval_batch_size``, ``seed``).
        schema: the dataset's schema; labels must be binary (1 = a relevant interaction).
        features: the model's sparse features (user and item fields among them).
        splits: ``train``, ``val`` and ``test`` arrays over ``features``.
        rank: this rank.
        world_size: number of ranks.

    Raises:
        ValueError: labels are not binary, or a feature is neither a user nor an item attribute.

    Example::

        task = build_topk(cfg.train, ds.schema, features, splits)
        trainer.fit(task.train_loader, task.val)
    """
    if schema.label != LabelKind.BINARY:
        raise ValueError(
            f"train.task = 'topk' needs binary labels (1 = relevant), the dataset has {schema.label.value} labels; "
            "prepare MovieLens with prepare.task = 'ctr'"
        )
    rc = cfg.ranking
    oov = {f: schema[f].oov_id for f in (rc.user_field, rc.item_field)}
    candidates = CandidateRows(
        [splits[s] for s in SPLITS], features, rc.user_field, rc.item_field, oov[rc.user_field], oov[rc.item_field]
    )
    data = RankingData(splits, candidates, schema)
    weighted = schema.is_weighted
    train_loader = NegativeSamplingLoader(
        splits["train"],
        candidates,
        data.items,
        features,
        rc.negatives,
        cfg.batch_size,
        rank,
        world_size,
        cfg.seed,
        weighted,
    )
    val = RankingEvaluator(data, "val", rc.ks, features, cfg.eval_batch_size, rank, world_size, weighted)
    return TopKTask(train_loader, val)
