import numpy as np
import torch

from recdim.data.loader import EvalLoader, TrainLoader, gather_rows, make_batch
from recdim.data.prepared import SparseColumn, SplitArrays


def split(n=50, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 4, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    bag = SparseColumn(rng.integers(0, 20, offsets[-1]).astype(np.int64), offsets)
    single = SparseColumn(rng.integers(0, 30, n).astype(np.int64), np.arange(n + 1, dtype=np.int64))
    return SplitArrays(
        labels=np.arange(n, dtype=np.float32),
        dense=rng.normal(size=(n, 2)).astype(np.float32),
        sparse={"bag": bag, "one": single},
    )


def test_gather_rows_matches_python_loop():
    data = split()
    idx = np.array([3, 0, 7, 7, 12, 49])
    for name, col in data.sparse.items():
        values, lengths, _ = gather_rows(col, idx)
        expect = [col.values[col.offsets[i] : col.offsets[i + 1]] for i in idx]
        assert lengths.tolist() == [len(e) for e in expect]
        assert values.tolist() == np.concatenate(expect).tolist()


def test_make_batch_kjt_and_weights():
    data = split()
    batch = make_batch(data, ["one", "bag"], np.array([1, 2, 3]), weighted=True)
    assert batch.sparse_features.keys() == ["one", "bag"]
    d = batch.sparse_features.to_dict()
    assert d["one"].values().tolist() == data.sparse["one"].values[[1, 2, 3]].tolist()
    assert torch.equal(batch.sparse_features.weights(), torch.ones_like(batch.sparse_features.weights()))
    assert batch.labels.tolist() == [1.0, 2.0, 3.0]
    assert batch.dense_features.shape == (3, 2)


def test_train_batches_are_the_same_for_any_world_size():
    data = split(64)
    one = TrainLoader(data, ["one", "bag"], batch_size=8, seed=3)
    two = [TrainLoader(data, ["one", "bag"], batch_size=8, rank=r, world_size=2, seed=3) for r in range(2)]
    for epoch in range(2):
        for b1, r0, r1 in zip(one.epoch(epoch), two[0].epoch(epoch), two[1].epoch(epoch)):
            assert b1.labels.tolist() == r0.labels.tolist() + r1.labels.tolist()
    assert [b.labels.tolist() for b in one.epoch(0)] != [b.labels.tolist() for b in one.epoch(1)]
    assert len(one) == 8


def test_eval_loader_covers_every_row_once_with_equal_rank_steps():
    data = split(23)
    loaders = [EvalLoader(data, ["one"], batch_size=4, rank=r, world_size=3) for r in range(3)]
    items = [list(loader) for loader in loaders]
    assert len({len(i) for i in items}) == 1  # ranks step together
    seen = []
    for per_rank in items:
        for batch, n_valid in per_rank:
            seen += batch.labels[:n_valid].tolist()
    assert sorted(seen) == list(range(23))
    for steps in zip(*items):
        assert len({b.labels.shape[0] for b, _ in steps}) == 1  # equal batch size on every rank
