"""Top-k recommendation: ranking metrics and full ranking against brute-force references, candidate rows,
negative sampling, and the ml-100k config end to end (marked slow)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import torch
from torch import nn

from recdim.config import load
from recdim.config.ranking import RankingConfig
from recdim.config_io import ConfigError
from recdim.data.candidates import CandidateRows, concat_splits, determined_by, row_keys
from recdim.data.negatives import NegativeSamplingLoader, sample_negatives
from recdim.data.prepared import SparseColumn, SplitArrays
from recdim.data.schema import FieldKind, FieldSpec, LabelKind, Schema
from recdim.train.metrics import ranking_metric_names, ranking_metrics_per_user
from recdim.train.ranking import RankingData, RankingEvaluator, build_topk

TOL = 1e-12  # float64 arithmetic on a handful of terms
ROOT = Path(__file__).resolve().parents[2]
ML100K = ROOT.parent / "shared" / "datasets" / "ml-100k"


def brute_force_metrics(ranked: Sequence[int], relevant: set, k: int) -> Dict[str, float]:
    """Recall / MRR / NDCG at k of one ranked list, straight from the definitions."""
    top = list(ranked)[:k]
    hits = [1 if item in relevant else 0 for item in top]
    recall = sum(hits) / len(relevant)
    mrr = 0.0
    for r, h in enumerate(hits, start=1):
        if h:
            mrr = 1.0 / r
            break
    dcg = sum(h / math.log2(r + 1) for r, h in enumerate(hits, start=1))
    idcg = sum(1.0 / math.log2(r + 1) for r in range(1, min(k, len(relevant)) + 1))
    return {f"recall@{k}": recall, f"mrr@{k}": mrr, f"ndcg@{k}": dcg / idcg}


# ---------------------------------------------------------------- metrics


def test_ranking_metrics_hand_computed():
    hits = torch.tensor([[False, True, False], [True, False, True]])
    got = dict(zip(ranking_metric_names([1, 3]), ranking_metrics_per_user(hits, torch.tensor([2, 3]), [1, 3]).T))
    l3 = 1.0 / math.log2(3)
    want = {
        "recall@1": [0.0, 1 / 3],
        "recall@3": [0.5, 2 / 3],
        "mrr@1": [0.0, 1.0],
        "mrr@3": [0.5, 1.0],
        "ndcg@1": [0.0, 1.0],
        "ndcg@3": [l3 / (1 + l3), (1 + 0.5) / (1 + l3 + 0.5)],
    }
    for name, values in want.items():
        assert got[name].tolist() == pytest.approx(values, abs=TOL), name


def test_ranking_metrics_match_brute_force_on_random_lists():
    rng = np.random.default_rng(0)
    ks = [1, 2, 5, 10]
    hits, n_rel, refs = [], [], []
    for _ in range(50):
        n_items = int(rng.integers(3, 15))
        relevant = set(rng.choice(n_items, size=int(rng.integers(1, n_items + 1)), replace=False).tolist())
        ranked = rng.permutation(n_items).tolist()
        row = [item in relevant for item in ranked[:10]]
        hits.append(row + [False] * (10 - len(row)))
        n_rel.append(len(relevant))
        ref: Dict[str, float] = {}
        for k in ks:
            ref.update(brute_force_metrics(ranked, relevant, k))
        refs.append(ref)
    got = ranking_metrics_per_user(torch.tensor(hits), torch.tensor(n_rel), ks)
    for u, ref in enumerate(refs):
        for j, name in enumerate(ranking_metric_names(ks)):
            assert float(got[u, j]) == pytest.approx(ref[name], abs=TOL), (u, name)


def test_ranking_metrics_reject_users_without_relevant_items():
    with pytest.raises(ValueError, match="relevant"):
        ranking_metrics_per_user(torch.zeros(1, 3, dtype=torch.bool), torch.tensor([0]), [1])


def test_ranking_config_validation():
    assert RankingConfig(ks=(5, 20), select="recall@20").select == "recall@20"
    with pytest.raises(ValueError, match="ranking.select"):
        RankingConfig(ks=(1, 5), select="ndcg@10")
    with pytest.raises(ValueError, match="ranking.select"):
        RankingConfig(select="hit@10")
    with pytest.raises(ConfigError):
        load(None, ("train.ranking.unknown=1",))
    assert load(None, ("train.task=topk",)).train.task == "topk"


# ---------------------------------------------------------------- a tiny hand-made dataset

NUM_USERS, NUM_ITEMS = 6, 9  # ids 0..4 users (5 = OOV), 0..7 items (8 = OOV)
USER_AGE = {0: 0, 1: 1, 2: 1, 3: 2, 4: 0}
ITEM_GENRES = {i: [i % 3] if i % 2 else [i % 3, (i + 1) % 3] for i in range(8)}
FEATURES = ["user_id", "item_id", "age", "genres"]


def schema() -> Schema:
    return Schema(
        fields=(
            FieldSpec("user_id", FieldKind.CATEGORICAL, NUM_USERS, NUM_USERS - 1),
            FieldSpec("item_id", FieldKind.CATEGORICAL, NUM_ITEMS, NUM_ITEMS - 1),
            FieldSpec("age", FieldKind.CATEGORICAL, 4, 3),
            FieldSpec("genres", FieldKind.MULTI_CATEGORICAL, 4, 3),
        ),
        label=LabelKind.BINARY,
    )


def make_split(rows: List[tuple]) -> SplitArrays:
    """Rows of (user, item, label); the OOV item gets a bag that differs between rows."""
    users = np.array([r[0] for r in rows], np.int64)
    items = np.array([r[1] for r in rows], np.int64)
    bags = [ITEM_GENRES.get(int(i), [j % 3]) for j, i in enumerate(items)]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in bags])]).astype(np.int64)
    one = np.arange(len(rows) + 1, dtype=np.int64)
    return SplitArrays(
        labels=np.array([r[2] for r in rows], np.float32),
        dense=np.zeros((len(rows), 0), np.float32),
        sparse={
            "user_id": SparseColumn(users, one),
            "item_id": SparseColumn(items, one),
            "age": SparseColumn(np.array([USER_AGE.get(int(u), 3) for u in users], np.int64), one),
            "genres": SparseColumn(np.array([g for b in bags for g in b], np.int64), offsets),
        },
    )


def tiny_splits() -> Dict[str, SplitArrays]:
    train = [(0, 0, 1), (0, 1, 0), (0, 2, 1), (1, 0, 1), (1, 3, 1), (2, 4, 1), (2, 5, 1), (3, 6, 1), (4, 0, 1)]
    train += [(3, 1, 1), (4, 2, 0), (2, 6, 1)]
    val = [(0, 3, 1), (0, 4, 1), (1, 5, 0), (1, 6, 1), (2, 0, 1), (3, 8, 1), (4, 1, 0), (0, 1, 1)]
    test = [(0, 5, 1), (0, 3, 1), (1, 7, 1), (2, 1, 1), (3, 2, 1), (4, 6, 1), (4, 8, 1), (3, 0, 0)]
    return {"train": make_split(train), "val": make_split(val), "test": make_split(test)}


class TableScorer(nn.Module):
    """Scores (user, item) from a fixed [users, items] table, read off the KJT (integer scores: ties)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, dense: torch.Tensor, kjt) -> torch.Tensor:
        return self.table[kjt["user_id"].values(), kjt["item_id"].values()]


def brute_force_ranking(splits: Dict[str, SplitArrays], split: str, table: torch.Tensor, ks: Sequence[int]):
    """Per-user metrics by plain Python: candidates = train items but OOV; mask earlier splits; rank by
    (-score, candidate order); relevant = the split's positives among unmasked candidates."""
    pairs = {
        s: list(zip(a.sparse["user_id"].values.tolist(), a.sparse["item_id"].values.tolist(), a.labels.tolist()))
        for s, a in splits.items()
    }
    candidates = sorted({i for _, i, _ in pairs["train"] if i != NUM_ITEMS - 1})
    earlier = ["train"] if split == "val" else ["train", "val"]
    out = {}
    for user in sorted({u for u, _, _ in pairs[split]}):
        if user == NUM_USERS - 1:
            continue
        masked = {i for s in earlier for u, i, _ in pairs[s] if u == user}
        relevant = {i for u, i, y in pairs[split] if u == user and y > 0.5 and i in candidates and i not in masked}
        if not relevant:
            continue
        unmasked = [i for i in candidates if i not in masked]
        ranked = sorted(unmasked, key=lambda i: (-float(table[user, i]), candidates.index(i)))
        ref: Dict[str, float] = {}
        for k in ks:
            ref.update(brute_force_metrics(ranked, relevant, k))
        out[user] = ref
    return out


def test_candidate_rows_assign_sides_and_build_pairs():
    splits = tiny_splits()
    cands = CandidateRows(list(splits.values()), FEATURES, "user_id", "item_id", NUM_USERS - 1, NUM_ITEMS - 1)
    assert cands.user_fields == ["user_id", "age"]
    assert cands.item_fields == ["item_id", "genres"]
    rows = cands.rows(np.array([3, 0, 2]), np.array([1, 6, 0]))
    assert rows.sparse["age"].values.tolist() == [USER_AGE[3], USER_AGE[0], USER_AGE[2]]
    bags = rows.sparse["genres"]
    got = [bags.values[bags.offsets[j] : bags.offsets[j + 1]].tolist() for j in range(3)]
    assert got == [ITEM_GENRES[1], ITEM_GENRES[6], ITEM_GENRES[0]]
    assert rows.labels.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="ids without a row"):
        cands.rows(np.array([0]), np.array([NUM_ITEMS - 1]))  # the OOV item has no table row


def test_candidate_rows_refuse_a_context_field():
    splits = tiny_splits()
    for s in splits.values():  # "age" now varies within users and within items
        n = len(s)
        s.sparse["age"] = SparseColumn(np.arange(n, dtype=np.int64) % 3, np.arange(n + 1, dtype=np.int64))
    with pytest.raises(ValueError, match="neither a user attribute"):
        CandidateRows(list(splits.values()), FEATURES, "user_id", "item_id", NUM_USERS - 1, NUM_ITEMS - 1)


def test_row_keys_tell_bags_apart():
    col = SparseColumn(np.array([1, 2, 2, 1, 1, 2, 3]), np.array([0, 2, 4, 6, 6, 7]))
    keys = row_keys(col)  # [1, 2], [2, 1], [1, 2], [], [3]
    assert keys[0] == keys[2] and len({int(k) for k in keys}) == 4
    assert determined_by(np.array([0, 1, 0, 2, 3]), keys)
    assert not determined_by(np.array([0, 0, 0, 2, 3]), keys)


@pytest.mark.parametrize("split", ["val", "test"])
def test_full_ranking_matches_brute_force(split):
    splits = tiny_splits()
    ks = (1, 2, 5)
    table = torch.from_numpy(np.random.default_rng(1).integers(0, 3, (NUM_USERS, NUM_ITEMS)).astype(np.float32))
    cands = CandidateRows(list(splits.values()), FEATURES, "user_id", "item_id", NUM_USERS - 1, NUM_ITEMS - 1)
    data = RankingData(splits, cands, schema())
    evaluator = RankingEvaluator(data, "val", ks, FEATURES, rows_per_batch=10).for_split(split)  # 1 user a forward
    ref = brute_force_ranking(splits, split, table, ks)
    got = evaluator.evaluate(TableScorer(table), torch.device("cpu"))
    assert got["users"] == len(ref) == evaluator.counts["users"]
    for name in ranking_metric_names(ks):
        assert got[name] == pytest.approx(np.mean([r[name] for r in ref.values()]), abs=TOL), name
    whole = RankingEvaluator(data, split, ks, FEATURES, rows_per_batch=1000).evaluate(
        TableScorer(table), torch.device("cpu")
    )
    assert whole == pytest.approx(got, abs=TOL)  # batching users does not change anything


def test_full_ranking_counts_and_rank_parts():
    splits = tiny_splits()
    cands = CandidateRows(list(splits.values()), FEATURES, "user_id", "item_id", NUM_USERS - 1, NUM_ITEMS - 1)
    data = RankingData(splits, cands, schema())
    assert data.items.tolist() == list(range(7))  # item 7 has no training row
    test = RankingEvaluator(data, "test", (1, 5), FEATURES, 100)
    # (0, 3) is a validation item of user 0 (masked), (1, 7) and (4, 8) are no candidates
    assert test.counts["masked_positives"] == 1 and test.counts["cold_positives"] == 2
    table = torch.arange(NUM_USERS * NUM_ITEMS, dtype=torch.float32).reshape(NUM_USERS, NUM_ITEMS)
    whole = test.evaluate(TableScorer(table), torch.device("cpu"))
    parts = [RankingEvaluator(data, "test", (1, 5), FEATURES, 100, r, 2) for r in range(2)]
    metrics = [p.evaluate(TableScorer(table), torch.device("cpu")) for p in parts]  # no process group: local
    assert sum(m["users"] for m in metrics) == whole["users"]
    mean = sum(m["ndcg@5"] * m["users"] for m in metrics) / whole["users"]
    assert mean == pytest.approx(whole["ndcg@5"], abs=TOL)


# ---------------------------------------------------------------- negatives


def test_sample_negatives_avoid_excluded_pairs():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(3), 200)
    exclude = np.array(sorted(u * 10 + i for u in range(3) for i in range(u, u + 5)))
    items = sample_negatives(users, np.arange(10), exclude, 10, rng)
    assert not np.isin(users * 10 + items, exclude).any()
    assert set(items[users == 0].tolist()) == set(range(5, 10))


def test_negative_sampling_loader_is_seeded_and_constant_length():
    splits = tiny_splits()
    cands = CandidateRows(list(splits.values()), FEATURES, "user_id", "item_id", NUM_USERS - 1, NUM_ITEMS - 1)
    train = splits["train"]
    loader = NegativeSamplingLoader(train, cands, np.arange(7), FEATURES, negatives=2, batch_size=4, seed=3)
    n_pos = int((train.labels > 0.5).sum())
    rows = loader.epoch_rows(0)
    assert len(rows) == len(train) + 2 * n_pos and len(loader) == len(rows) // 4
    neg_users = rows.sparse["user_id"].values[len(train) :]
    neg_items = rows.sparse["item_id"].values[len(train) :]
    assert rows.labels[len(train) :].max() == 0
    positives = {
        (u, i) for u, i, y in zip(train.sparse["user_id"].values, train.sparse["item_id"].values, train.labels) if y
    }
    assert not {(int(u), int(i)) for u, i in zip(neg_users, neg_items)} & positives
    assert rows.sparse["age"].values[len(train) :].tolist() == [USER_AGE[int(u)] for u in neg_users]
    again = loader.epoch_rows(0)
    assert np.array_equal(again.sparse["item_id"].values, rows.sparse["item_id"].values)
    assert not np.array_equal(loader.epoch_rows(1).sparse["item_id"].values, rows.sparse["item_id"].values)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) and batches[0].labels.shape == (4,)
    assert len(concat_splits([train, train])) == 2 * len(train)


def test_build_topk_needs_binary_labels():
    splits = tiny_splits()
    rating = Schema(fields=schema().fields, label=LabelKind.RATING)
    with pytest.raises(ValueError, match="binary labels"):
        build_topk(load(None, ("train.task=topk",)).train, rating, FEATURES, splits)


# ---------------------------------------------------------------- ml-100k end to end


@pytest.mark.slow
@pytest.mark.skipif(not (ML100K / "u.data").exists(), reason=f"MovieLens 100K not found at {ML100K}")
def test_ml100k_topk_neumf(tmp_path):
    from recdim.data.preprocess import prepare
    from recdim.train.run import run_train

    sets = (f"prepare.input={ML100K}", f"prepare.output={tmp_path / 'data'}", "train.epochs=3", "train.progress=false")
    cfg = load(str(ROOT / "configs" / "ml100k_topk.toml"), sets)
    prepare(cfg.prepare)
    res = run_train(cfg, None)
    names = set(ranking_metric_names((1, 5, 10)))
    assert names <= set(res["val"]) and names <= set(res["test"])
    assert res["val"]["users"] > 800 and res["test"]["users"] > 800
    assert res["val"] == res["history"][res["best_epoch"]]["val"]  # selected on validation ndcg@10
    assert res["val"]["ndcg@10"] == max(h["val"]["ndcg@10"] for h in res["history"])
    assert res["val"]["recall@10"] > 0.09 and res["test"]["recall@10"] > 0.09  # popularity ranks about 0.116
