"""Soft selection (DNIS / AutoSrh) against a per-id reference: forward, alpha and table gradients, unsharded
and sharded over two gloo processes with the fused SGD table optimizer."""

from typing import Dict, List

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor

from recdim.config import TrainConfig
from recdim.layout.blocks import BlockPlan, global_blocks, per_table_blocks
from recdim.modules.soft_selection import BlockSplitPooling, SequenceScaling, SoftSelectionProvider
from recdim.modules.table_init import init_tables, local_pieces, table_rows, table_state
from recdim.train.distributed import build_optimizer, init_distributed, shard_model
from tests.dist_utils import run_ranks

K = 4
TOL = dict(rtol=1e-5, atol=1e-5)
NUM = {"u": 37, "tags": 11, "i": 23, "w": 5}
MULTI = ("tags", "w")


def make_plan(scheme: str, L: int) -> BlockPlan:
    if scheme == "per_table":
        return per_table_blocks(NUM, L)
    rng = np.random.default_rng(7)
    return global_blocks({f: np.sort(rng.integers(0, 9, n))[::-1].copy() for f, n in NUM.items()}, L)


def make_bags(seed: int, B: int, weighted: bool) -> Dict[str, List[List[int]]]:
    """Per feature, B bags of ids: single-valued features get 0 or 1 id, multi-valued 0 to 5."""
    g = np.random.default_rng(seed)
    bags = {}
    for f, n in NUM.items():
        hi = 6 if f in MULTI else 2
        bags[f] = [g.integers(0, n, g.integers(0, hi)).tolist() for _ in range(B)]
    return bags


def make_kjt(bags, rows: slice, weights=None) -> KeyedJaggedTensor:
    values, lengths, ws = [], [], []
    for f in NUM:
        for b, bag in enumerate(bags[f][rows]):
            values += bag
            lengths.append(len(bag))
            if weights is not None:
                ws += weights[f][rows][b]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(NUM),
        values=torch.tensor(values, dtype=torch.int64),
        lengths=torch.tensor(lengths, dtype=torch.int32),
        weights=torch.tensor(ws, dtype=torch.float32) if weights is not None else None,
    )


def reference(tables, alpha, plan, bags, pooling, weights=None):
    """Plain per-id loops: out[s, f] = pool_{i in bag} w_i * W_f[i] * alpha[row(f, block(i))]."""
    L = plan.num_blocks
    B = len(next(iter(bags.values())))
    rows = []
    for s in range(B):
        feats = []
        for fi, f in enumerate(NUM):
            bounds = plan.boundaries[fi]
            acc = torch.zeros(K, dtype=tables[f].dtype)
            for j, i in enumerate(bags[f][s]):
                b = max(b for b in range(L) if bounds[b] <= i)
                row = (fi * L if plan.scheme == "per_table" else 0) + b
                w = weights[f][s][j] if weights is not None else 1.0
                acc = acc + w * tables[f][i] * alpha[row]
            if pooling == "mean" and bags[f][s]:
                acc = acc / len(bags[f][s])
            feats.append(acc)
        rows.append(torch.cat(feats))
    return torch.stack(rows)  # [B, F * K]


PATHS = {
    "split": {f: BlockSplitPooling() for f in MULTI},
    "sequence": {f: SequenceScaling() for f in MULTI},
    "mixed": {"tags": SequenceScaling(), "w": BlockSplitPooling()},
}
CASES = [  # (scheme, L, pooling, weighted)
    ("global", 3, "sum", False),
    ("per_table", 4, "mean", False),
    ("global", 12, "sum", True),  # L > rows of some tables: empty blocks
    ("per_table", 1, "mean", True),
]


def table_weight(provider, f):
    return provider.get_submodule(
        f"{'ec.embeddings' if f in provider._seq_features else 'ebc.embedding_bags'}.t_{f}"
    ).weight


@pytest.mark.parametrize("paths", sorted(PATHS))
@pytest.mark.parametrize("scheme,L,pooling,weighted", CASES)
def test_unsharded_matches_per_id_reference(scheme, L, pooling, weighted, paths):
    B = 9
    plan = make_plan(scheme, L)
    provider = SoftSelectionProvider(NUM, K, plan, PATHS[paths], pooling=pooling, is_weighted=weighted)
    torch.manual_seed(0)
    with torch.no_grad():
        provider.alpha.uniform_(0, 1)
    bags = make_bags(1, B, weighted)
    g = np.random.default_rng(2)
    weights = {f: [g.uniform(0.5, 2, len(b)).tolist() for b in bags[f]] for f in NUM} if weighted else None
    kjt = make_kjt(bags, slice(None), weights)
    grad_out = torch.randn(B, len(NUM) * K)

    kt = provider(kjt)
    (kt.values() * grad_out).sum().backward()

    tables = {f: table_weight(provider, f).detach().clone().requires_grad_() for f in NUM}
    alpha = provider.alpha.detach().clone().requires_grad_()
    ref = reference(tables, alpha, plan, bags, pooling, weights)
    (ref * grad_out).sum().backward()
    assert kt.keys() == list(NUM)
    torch.testing.assert_close(kt.values(), ref, **TOL)
    torch.testing.assert_close(provider.alpha.grad, alpha.grad, **TOL)
    for f in NUM:
        torch.testing.assert_close(table_weight(provider, f).grad, tables[f].grad, **TOL, msg=f)

    # Frozen tables: same output and alpha gradient, nothing reaches the tables.
    provider.zero_grad(set_to_none=True)
    with provider.frozen_tables():
        out = provider(kjt).values()
    (out * grad_out).sum().backward()
    torch.testing.assert_close(out, ref.detach(), **TOL)
    torch.testing.assert_close(provider.alpha.grad, alpha.grad, **TOL)
    assert all(table_weight(provider, f).grad is None for f in NUM)


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("scheme,L,pooling,weighted", CASES)
def test_single_valued_features_only_match_per_id_reference(scheme, L, pooling, weighted, full):
    """Every feature on the per-id path: one id in every bag (``full``, the one-lookup fast path) or bags of
    0 or 1 id (empty bags read id 0 of the alpha table; their pooled row is zero)."""
    B = 9
    plan = make_plan(scheme, L)
    provider = SoftSelectionProvider(NUM, K, plan, pooling=pooling, is_weighted=weighted)
    with torch.no_grad():
        provider.alpha.uniform_(0, 1, generator=torch.Generator().manual_seed(0))
    g = np.random.default_rng(4)
    bags = {f: [g.integers(0, n, 1 if full else g.integers(0, 2)).tolist() for _ in range(B)] for f, n in NUM.items()}
    bags["w"][-1] = [NUM["w"] - 1] if full else []  # the last id of the last table / an empty last bag
    weights = {f: [g.uniform(0.5, 2, len(b)).tolist() for b in bags[f]] for f in NUM} if weighted else None
    grad_out = torch.randn(B, len(NUM) * K, generator=torch.Generator().manual_seed(1))
    kt = provider(make_kjt(bags, slice(None), weights))
    (kt.values() * grad_out).sum().backward()
    tables = {f: table_weight(provider, f).detach().clone().requires_grad_() for f in NUM}
    alpha = provider.alpha.detach().clone().requires_grad_()
    ref = reference(tables, alpha, plan, bags, pooling, weights)
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(kt.values(), ref, **TOL)
    torch.testing.assert_close(provider.alpha.grad, alpha.grad, **TOL)
    for f in NUM:
        torch.testing.assert_close(table_weight(provider, f).grad, tables[f].grad, **TOL, msg=f)


def test_single_valued_path_rejects_bags_and_reports_sizes():
    plan = make_plan("global", 3)
    provider = SoftSelectionProvider(NUM, K, plan, {"tags": BlockSplitPooling()})
    bags = make_bags(1, 4, False)
    bags["w"][0] = [0, 1]  # "w" declared single-valued here
    with pytest.raises(RuntimeError):
        provider(make_kjt(bags, slice(None)))
    assert provider.embedding_params() == K * sum(NUM.values())
    assert provider.embedding_bytes() == 4 * K * sum(NUM.values()) + 4 * 3 * K + 8 * 4 * 4
    assert provider.arch_parameters() == [provider.alpha] and torch.all(provider.alpha == 1)


# ---- sharded: 2 gloo processes, DMP, fused SGD ------------------------------------------------------------

SHARDED = [  # (sharding, scheme, L, pooling, paths)
    ("table_wise", "global", 3, "sum", "mixed"),
    ("column_wise", "per_table", 4, "mean", "sequence"),
    ("table_wise", "per_table", 2, "mean", "split"),
]
GLOBAL_B, LR, SEED, STD = 8, 0.5, 3, 0.1


class Net(torch.nn.Module):
    def __init__(self, plan: BlockPlan, pooling: str, paths: str) -> None:
        super().__init__()
        self.provider = SoftSelectionProvider(NUM, K, plan, PATHS[paths], pooling=pooling, device=torch.device("meta"))

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self.provider(kjt).values()


def sharded_alpha(plan: BlockPlan) -> torch.Tensor:
    return torch.rand(plan.num_alpha_rows, K, generator=torch.Generator().manual_seed(5))


def _sharded_step(rank: int, world: int):
    ctx = init_distributed("cpu")
    results = {}
    for case in SHARDED:
        sharding, scheme, L, pooling, paths = case
        plan = make_plan(scheme, L)
        cfg = TrainConfig(sharding=sharding, embedding_optimizer="sgd", embedding_lr=LR, device="cpu")
        dmp = shard_model(Net(plan, pooling, paths), cfg, ctx)
        init_tables(dmp, SEED, STD)
        optim = build_optimizer(dmp, cfg, ctx)
        provider = next(m for m in dmp.modules() if isinstance(m, SoftSelectionProvider))
        with torch.no_grad():
            provider.alpha.copy_(sharded_alpha(plan))
        bags = make_bags(11, GLOBAL_B, False)
        local = GLOBAL_B // world
        rows = slice(rank * local, (rank + 1) * local)
        grad_out = torch.randn(GLOBAL_B, len(NUM) * K, generator=torch.Generator().manual_seed(6))
        optim.zero_grad()
        out = dmp(make_kjt(bags, rows))
        ((out * grad_out[rows]).sum() / local).backward()  # mean over this rank's rows
        alpha_grad = provider.alpha.grad.clone()
        pieces = [(key, r, c, t.detach().clone()) for key, v in table_state(dmp) for t, r, c in local_pieces(v)]

        # Frozen tables: the fused optimizer must not move them.
        optim.zero_grad()
        with provider.frozen_tables():
            out2 = dmp(make_kjt(bags, rows))
        (out2 * grad_out[rows]).sum().backward()
        after = [(key, r, c, t.detach().clone()) for key, v in table_state(dmp) for t, r, c in local_pieces(v)]
        unchanged = all(torch.equal(a[3], b[3]) for a, b in zip(pieces, after))
        results[case] = {"out": out.detach(), "alpha_grad": alpha_grad, "pieces": pieces, "frozen_unchanged": unchanged}
    return results


@pytest.mark.multiprocess
def test_sharded_two_processes_match_reference():
    ranks = run_ranks(2, _sharded_step)
    for case in SHARDED:
        sharding, scheme, L, pooling, _ = case
        plan = make_plan(scheme, L)
        res = [r[case] for r in ranks]
        keys = {p[0] for r in res for p in r["pieces"]}
        tables = {}
        for key in keys:
            f = key.split(".")[-2][len("t_") :]
            tables[f] = table_rows(SEED, key, (0, NUM[f]), (0, K), K, STD).requires_grad_()
        alpha = sharded_alpha(plan).requires_grad_()
        bags = make_bags(11, GLOBAL_B, False)
        grad_out = torch.randn(GLOBAL_B, len(NUM) * K, generator=torch.Generator().manual_seed(6))
        ref = reference(tables, alpha, plan, bags, pooling)
        ((ref * grad_out).sum() / GLOBAL_B).backward()

        torch.testing.assert_close(torch.cat([r["out"] for r in res]), ref.detach(), **TOL, msg=str(case))
        for r in res:
            torch.testing.assert_close(r["alpha_grad"], alpha.grad, **TOL, msg=str(case))
            assert r["frozen_unchanged"], case
        # The table after one fused SGD step is W - lr * grad, piece by piece over both ranks.
        seen = {f: torch.zeros(NUM[f], K, dtype=torch.bool) for f in NUM}
        for r in res:
            for key, (r0, r1), (c0, c1), t in r["pieces"]:
                f = key.split(".")[-2][len("t_") :]
                want = (tables[f] - LR * tables[f].grad).detach()[r0:r1, c0:c1]
                torch.testing.assert_close(t, want, **TOL, msg=f"{case} {f}")
                seen[f][r0:r1, c0:c1] = True
        assert all(s.all() for s in seen.values()), case
        assert all(tables[f].grad.abs().sum() > 0 for f in NUM)  # every table took a real step
