import pytest
import torch

from recdim.config import TrainConfig
from recdim.modules.table_init import ROWS_PER_BLOCK, init_tables, restore, snapshot, table_rows
from recdim.modules.uniform import UniformEmbeddingProvider
from recdim.train.distributed import init_distributed, shard_model
from tests.dist_utils import run_ranks

SIZES = {"a": ROWS_PER_BLOCK + 37, "b": 11}


def full_tables(seed=7, std=0.1, dim=8):
    return {
        f: table_rows(seed, f"provider.ebc.embedding_bags.t_{f}.weight", (0, n), (0, dim), dim, std)
        for f, n in SIZES.items()
    }


class Holder(torch.nn.Module):
    def __init__(self, device):
        super().__init__()
        self.provider = UniformEmbeddingProvider(SIZES, 8, device=device)


def test_table_rows_is_consistent_across_slices():
    full = table_rows(1, "k", (0, 2 * ROWS_PER_BLOCK + 5), (0, 8), 8, 1.0)
    part = table_rows(1, "k", (ROWS_PER_BLOCK - 3, ROWS_PER_BLOCK + 9), (2, 6), 8, 1.0)
    assert torch.equal(full[ROWS_PER_BLOCK - 3 : ROWS_PER_BLOCK + 9, 2:6], part)
    assert not torch.equal(table_rows(2, "k", (0, 4), (0, 8), 8, 1.0), full[:4])


def test_unsharded_init_and_snapshot_restore():
    m = Holder(torch.device("cpu"))
    init_tables(m, seed=7, std=0.1)
    ref = full_tables()
    for f in SIZES:
        assert torch.equal(m.provider.ebc.embedding_bags[f"t_{f}"].weight.detach(), ref[f])
    snap = snapshot(m)
    with torch.no_grad():
        m.provider.ebc.embedding_bags["t_b"].weight.zero_()
    restore(m, snap)
    assert torch.equal(m.provider.ebc.embedding_bags["t_b"].weight.detach(), ref["b"])


def _sharded(rank, world, sharding):
    ctx = init_distributed("cpu")
    dmp = shard_model(Holder(torch.device("meta")), TrainConfig(sharding=sharding, device="cpu"), ctx)
    init_tables(dmp, seed=7, std=0.1)
    out = {}
    for key, value in dmp.state_dict().items():
        for shard in value.local_shards():
            out.setdefault(key, []).append((list(shard.metadata.shard_offsets), shard.tensor.clone()))
    return out


@pytest.mark.multiprocess
def test_sharded_init_equals_unsharded_for_table_and_column_wise():
    ref = full_tables()
    for sharding in ("table_wise", "column_wise"):
        pieces = run_ranks(2, _sharded, sharding)
        covered = {f: torch.zeros_like(ref[f], dtype=torch.bool) for f in SIZES}
        for rank_out in pieces:
            for key, shards in rank_out.items():
                f = key.split(".")[-2][2:]
                for (r, c), t in shards:
                    assert torch.equal(t, ref[f][r : r + t.size(0), c : c + t.size(1)]), (sharding, key)
                    covered[f][r : r + t.size(0), c : c + t.size(1)] = True
        assert all(bool(c.all()) for c in covered.values()), sharding
