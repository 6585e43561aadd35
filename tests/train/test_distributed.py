"""One process and two gloo processes take the same training steps (sharded tables, fused kernels)."""

import pytest
import torch
from torchrec import KeyedJaggedTensor

from recdim.config import TrainConfig
from recdim.modules.table_init import init_tables
from recdim.modules.uniform import UniformEmbeddingProvider
from recdim.train.distributed import build_optimizer, init_distributed, shard_model
from tests.dist_utils import run_ranks

pytestmark = pytest.mark.multiprocess  # the module's one test runs on 1 and 2 gloo ranks

CASES = [("table_wise", "rowwise_adagrad"), ("column_wise", "sgd"), ("table_wise", "adam")]
BATCH, STEPS = 8, 4


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.provider = UniformEmbeddingProvider({"a": 500, "b": 30}, 8, device=torch.device("meta"))
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(16, 1)

    def forward(self, kjt):
        return self.lin(self.provider(kjt).values()).squeeze(-1)


def _train(rank, world):
    ctx = init_distributed("cpu")
    results = {}
    for sharding, opt in CASES:
        cfg = TrainConfig(sharding=sharding, embedding_optimizer=opt, embedding_lr=0.1, lr=0.01, device="cpu")
        dmp = shard_model(Net(), cfg, ctx)
        init_tables(dmp, 0, 0.05)
        optim = build_optimizer(dmp, cfg, ctx)
        g = torch.Generator().manual_seed(1)
        outs = []
        for _ in range(STEPS):
            a, b = torch.randint(0, 500, (BATCH,), generator=g), torch.randint(0, 30, (BATCH,), generator=g)
            lo, hi = rank * BATCH // world, (rank + 1) * BATCH // world
            kjt = KeyedJaggedTensor.from_lengths_sync(
                keys=["a", "b"],
                values=torch.cat([a[lo:hi], b[lo:hi]]),
                lengths=torch.ones(2 * (hi - lo), dtype=torch.int32),
            )
            optim.zero_grad()
            out = dmp(kjt)
            (out - 1.0).pow(2).mean().backward()
            optim.step()
            outs.append(out.detach())
        results[(sharding, opt)] = torch.stack(outs)  # [STEPS, BATCH / world]
    return results


def test_one_and_two_processes_take_the_same_steps():
    one = run_ranks(1, _train)[0]
    two = run_ranks(2, _train)
    for case in CASES:
        joined = torch.cat([two[0][case], two[1][case]], dim=1)
        # Tolerance: float32 reductions in a different order (all-reduce, all-to-all); 4 steps.
        torch.testing.assert_close(joined, one[case], rtol=0, atol=1e-6, msg=str(case))
        assert not torch.allclose(one[case][0], one[case][-1])  # it did train
