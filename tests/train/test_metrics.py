"""Global metrics against brute-force references, and gathering across ranks."""

from __future__ import annotations

import math
import os
import socket
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recdim.data.schema import LabelKind
from recdim.train.metrics import (
    MetricAccumulator,
    compute_metrics,
    gather,
    log_loss,
    mse,
    rmse,
    roc_auc,
)


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pair_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=300)
    scores = np.round(rng.normal(size=300) + 0.7 * labels, 1)  # rounding makes many ties
    assert len(np.unique(scores)) < 300
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)
    t = roc_auc(torch.from_numpy(labels), torch.from_numpy(scores).float())
    assert t == pytest.approx(brute_force_auc(labels, scores.astype(np.float32)), abs=1e-12)


def test_auc_edge_cases() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([1, 0], [0.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="one class"):
        roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="labels"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="length"):
        roc_auc([0, 1], [0.1])


def test_log_loss_mse_rmse_by_hand() -> None:
    assert log_loss([1, 0, 1], [0.9, 0.2, 0.6]) == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.6)) / 3)
    assert log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - 1e-7))
    assert log_loss([1], [0.0], eps=1e-3) == pytest.approx(-math.log(1e-3))
    assert mse([3.0, 4.0, 1.0], [2.5, 4.0, 2.0]) == pytest.approx((0.25 + 0 + 1) / 3)
    assert rmse([3.0, 4.0], [2.0, 4.0]) == pytest.approx(math.sqrt(0.5))


def test_compute_metrics() -> None:
    logits = torch.tensor([-2.0, 0.5, 1.5, -0.3])
    labels = torch.tensor([0.0, 1.0, 1.0, 1.0])
    m = compute_metrics(LabelKind.BINARY, labels, logits)
    assert set(m) == {"auc", "logloss"}
    probs = torch.sigmoid(logits.double()).numpy()
    assert m["logloss"] == pytest.approx(log_loss(labels.numpy(), probs), abs=1e-12)
    assert m["auc"] == pytest.approx(1.0)
    r = compute_metrics(LabelKind.RATING, torch.tensor([4.0, 2.0]), torch.tensor([3.0, 2.5]))
    assert r == pytest.approx({"mse": 0.625, "rmse": math.sqrt(0.625)})


def test_accumulator_is_global_not_per_batch() -> None:
    acc = MetricAccumulator(LabelKind.BINARY)
    # Each batch alone has one class (per-batch AUC is undefined); globally it is perfect.
    acc.update(torch.tensor([-1.0, -2.0]), torch.tensor([0.0, 0.0]))
    acc.update(torch.tensor([[3.0], [1.0]]), torch.tensor([1.0, 1.0]))
    assert acc.num_examples == 4
    assert acc.compute()["auc"] == 1.0
    outputs, labels = acc.local()
    assert outputs.dtype == torch.float64 and labels.tolist() == [0.0, 0.0, 1.0, 1.0]
    acc.reset()
    assert acc.num_examples == 0
    with pytest.raises(ValueError, match="length"):
        acc.update(torch.zeros(3), torch.zeros(2))


def test_gather_without_process_group_and_world_one() -> None:
    x = torch.arange(5.0)
    assert not dist.is_initialized()
    assert gather(x) is x
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=0, world_size=1)
        try:
            torch.testing.assert_close(gather(x), x)
        finally:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PARTS = {0: 3, 1: 5}  # unequal lengths per rank


def _part(rank: int) -> torch.Tensor:
    n = PARTS[rank]
    return torch.stack([torch.arange(n, dtype=torch.float64) + 100 * rank] * 2, dim=1)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        got = gather(_part(rank))
        empty_on_rank0 = gather(torch.arange(2 * rank, dtype=torch.int64))
        acc = MetricAccumulator(LabelKind.BINARY)
        # Rank 0 holds only negatives, rank 1 only positives: AUC exists only globally.
        scores = torch.linspace(-1, 1, PARTS[rank]) + 3.0 * rank
        acc.update(scores, torch.full((PARTS[rank],), float(rank)))
        metrics = acc.compute()
        torch.save(
            {"gathered": got, "empty": empty_on_rank0, "metrics": metrics}, os.path.join(out_dir, f"rank{rank}.pt")
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
def test_gather_two_gloo_ranks_unequal_lengths() -> None:
    world = 2
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world, _free_port(), out_dir), nprocs=world, join=True)
        results = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world)]
    want = torch.cat([_part(r) for r in range(world)])
    for r in results:
        torch.testing.assert_close(r["gathered"], want)
        assert r["empty"].tolist() == [0, 1]
        assert r["metrics"]["auc"] == 1.0
    assert results[0]["metrics"] == results[1]["metrics"]
