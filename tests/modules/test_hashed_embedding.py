"""Row-sharing (hashing / QR) provider against per-id ``nn.Embedding`` lookups of ``i mod m`` and of the quotient
and remainder rows: forward, table gradients and effective weights, unsharded and sharded over two gloo
processes with the fused SGD table optimizer; the budget math of both plans."""

import math
from typing import Dict, List

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor

from recdim.config import ModelConfig, TrainConfig
from recdim.layout.dims import budget_for_cr
from recdim.layout.shared_rows import SharedRows, Sharing, SharingPlan, hash_plan, qr_plan
from recdim.modules.hashed_embedding import HashedEmbeddingProvider, QRCombine, hashed_provider_factory, qr_key
from recdim.modules.table_init import init_tables, local_pieces, table_rows, table_state
from recdim.modules.uniform import table_name
from recdim.retrain.shared_rows import shift_tables
from recdim.train.distributed import build_optimizer, init_distributed, shard_model
from tests.dist_utils import run_ranks

K = 8
TOL = dict(rtol=1e-5, atol=1e-6)
NUM = {"u": 37, "tags": 23, "i": 29, "w": 3}
MULTI = ("tags", "w")
# QR on a single- and a multi-valued feature, hashing on one, and a feature too small to share.
LAYOUTS = [
    SharedRows("u", 37, Sharing.QR, 5),  # quotient 8 rows, remainder 5
    SharedRows("tags", 23, Sharing.QR, 4),  # quotient 6 rows, remainder 4
    SharedRows("i", 29, Sharing.HASH, 7),
    SharedRows("w", 3, Sharing.FULL, 3),
]


def make_bags(seed: int, B: int) -> Dict[str, List[List[int]]]:
    """Per feature, B bags: single-valued features 0 or 1 id, multi-valued 0 to 5 (empty bags included)."""
    g = np.random.default_rng(seed)
    return {
        f: [g.integers(0, n, g.integers(0, 6 if f in MULTI else 2)).tolist() for _ in range(B)] for f, n in NUM.items()
    }


def make_weights(bags, seed: int):
    g = np.random.default_rng(seed)
    return {f: [(g.random(len(b)) + 0.5).tolist() for b in bs] for f, bs in bags.items()}


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


def shapes() -> Dict[str, int]:
    """Rows of every table by table name."""
    out = {}
    for s in LAYOUTS:
        if s.sharing == Sharing.QR:
            out[table_name(qr_key(s.feature, "q"))] = math.ceil(s.num_embeddings / s.divisor)
            out[table_name(qr_key(s.feature, "r"))] = s.divisor
        else:
            out[table_name(s.feature)] = s.divisor
    return out


def reference_modules(tables: Dict[str, torch.Tensor]) -> torch.nn.ModuleDict:
    """One plain ``nn.Embedding`` per table holding ``tables``' values."""
    return torch.nn.ModuleDict(
        {name: torch.nn.Embedding.from_pretrained(w.clone(), freeze=False) for name, w in tables.items()}
    )


def reference_row(emb: torch.nn.ModuleDict, s: SharedRows, i: int, combine: QRCombine) -> torch.Tensor:
    """Id i's vector: hashed ``E[i % m]``, QR ``E_q[i // m] (*|+) E_r[i % m]``, full ``E[i]``."""
    f, m = s.feature, s.divisor
    if s.sharing == Sharing.QR:
        q = emb[table_name(qr_key(f, "q"))](torch.tensor(i // m))
        r = emb[table_name(qr_key(f, "r"))](torch.tensor(i % m))
        return q * r if combine == QRCombine.MULT else q + r
    return emb[table_name(f)](torch.tensor(i % m if s.sharing == Sharing.HASH else i))


def reference(emb: torch.nn.ModuleDict, bags, combine: QRCombine, pooling="sum", weights=None) -> torch.Tensor:
    """Per-id loop over :func:`reference_row`, weighted, summed (or averaged) per bag."""
    B = len(next(iter(bags.values())))
    rows = []
    for b in range(B):
        parts = []
        for s in LAYOUTS:
            v = torch.zeros(K)
            for t, i in enumerate(bags[s.feature][b]):
                v = v + reference_row(emb, s, i, combine) * (weights[s.feature][b][t] if weights is not None else 1.0)
            parts.append(v / max(len(bags[s.feature][b]), 1) if pooling == "mean" else v)
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def random_tables(seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(n, K, generator=g) for name, n in shapes().items()}


def provider_tables(p: HashedEmbeddingProvider) -> Dict[str, torch.nn.Parameter]:
    out = {}
    if p.ebc is not None:
        out.update({n: m.weight for n, m in p.ebc.embedding_bags.items()})
    if p.ec is not None:
        out.update({n: m.weight for n, m in p.ec.embeddings.items()})
    return out


def test_tables_params_and_bytes():
    p = HashedEmbeddingProvider(LAYOUTS, K, device=torch.device("cpu"))
    got = {c.name: c.num_embeddings for c in p.tables}
    assert got == shapes() == {"t_u__q": 8, "t_u__r": 5, "t_tags__q": 6, "t_tags__r": 4, "t_i": 7, "t_w": 3}
    assert {c.name for c in p.seq_tables} == {"t_u__q", "t_u__r", "t_tags__q", "t_tags__r"}  # products: per id
    plan = SharingPlan(tuple(LAYOUTS), K, 2.0)
    assert p.embedding_params() == plan.params == 33 * K
    assert p.embedding_bytes() == plan.bytes == 4 * 33 * K + 8 * 3  # one int64 divisor per shared feature
    assert p.init_shifts() == {"t_u__r": 1.0, "t_tags__r": 1.0}
    add = HashedEmbeddingProvider(LAYOUTS, K, QRCombine.ADD, device=torch.device("cpu"))
    assert add.ec is None and add.init_shifts() == {} and add.embedding_params() == p.embedding_params()
    with pytest.raises(ValueError, match="divisor"):
        SharedRows("x", 10, Sharing.HASH, 11)
    with pytest.raises(ValueError, match="no row layouts"):
        hashed_provider_factory(LAYOUTS)(ModelConfig(embedding_dim=K), {"z": 3}, False, torch.device("cpu"))
    with pytest.raises(ValueError, match="other numbers of ids"):
        hashed_provider_factory(LAYOUTS)(ModelConfig(embedding_dim=K), {"u": 38}, False, torch.device("cpu"))


@pytest.mark.parametrize("combine", list(QRCombine))
@pytest.mark.parametrize("pooling,weighted", [("sum", False), ("mean", False), ("sum", True), ("mean", True)])
def test_forward_and_gradients_match_reference(combine, pooling, weighted):
    p = HashedEmbeddingProvider(LAYOUTS, K, combine, pooling, weighted, device=torch.device("cpu"))
    tables = random_tables(1)
    with torch.no_grad():
        for name, w in provider_tables(p).items():
            w.copy_(tables[name])
    bags = make_bags(3, 24)
    ws = make_weights(bags, 4) if weighted else None
    out = p(make_kjt(bags, slice(None), ws)).values()
    emb = reference_modules(tables)
    ref = reference(emb, bags, combine, pooling, ws)
    assert out.shape == (24, len(NUM) * K)
    torch.testing.assert_close(out, ref, **TOL)
    assert any(len(x) == 0 for x in bags["tags"]) and any(len(x) > 1 for x in bags["tags"])

    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * proj).sum().backward()
    (ref * proj).sum().backward()
    for name, w in provider_tables(p).items():
        g = w.grad
        g = torch.zeros_like(w) if g is None else (g.to_dense() if g.is_sparse else g)
        torch.testing.assert_close(g, emb[name].weight.grad, **TOL)

    eff = p.effective_weights(tables)
    with torch.no_grad():
        for s in LAYOUTS:
            want = torch.stack([reference_row(emb, s, i, combine) for i in range(s.num_embeddings)])
            torch.testing.assert_close(eff[s.feature], want, **TOL)


def test_frozen_tables_cut_gradients():
    p = HashedEmbeddingProvider(LAYOUTS, K, device=torch.device("cpu"))
    with p.frozen_tables():
        out = p(make_kjt(make_bags(1, 8), slice(None))).values()
    assert not out.requires_grad


def test_hash_plan_meets_the_budget():
    num = {"a": 1000, "b": 500, "c": 200, "d": 50, "e": 1}
    for cr in (1.5, 2.0, 3.0, 4.0, 7.3, 10.0):
        plan = hash_plan(num, 16, cr)
        assert plan.params <= budget_for_cr(num, 16, cr) and plan.cr >= cr * (1 - 1e-9), cr
        for s in plan.layouts:
            ceil = math.ceil(s.num_embeddings / cr)
            assert s.divisor in (ceil, ceil - 1) or s.divisor == 1
            assert s.sharing == (Sharing.FULL if s.divisor == s.num_embeddings else Sharing.HASH)
    # 1751 ids at CR 4: 437 rows of 16; ceil gives 439, so "d" (12.5 -> 13) and then "a" give one back.
    assert [s.divisor for s in hash_plan(num, 16, 4.0).layouts] == [249, 125, 50, 12, 1]
    assert hash_plan(num, 16, 4.0).layouts[-1].sharing == Sharing.FULL  # one id: nothing to share
    # One row per feature is as far as hashing goes: 1751 ids over 5 rows.
    with pytest.raises(ValueError, match=r"highest reachable CR is 350\.200"):
        hash_plan(num, 16, 400.0)


def test_qr_plan_meets_the_budget_and_refuses_what_it_cannot():
    num = {"a": 1000, "b": 500, "c": 200, "d": 50, "e": 3}
    for cr in (1.5, 2.0, 3.0, 4.0, 6.0, 10.0):
        plan = qr_plan(num, 16, cr)
        assert plan.params <= budget_for_cr(num, 16, cr) and plan.cr >= cr, cr
        assert plan.cr <= cr * 1.05, (cr, plan.cr)  # close to equal bytes, not far under the budget
        for s in plan.layouts:
            if s.sharing == Sharing.QR:
                assert 2 <= s.divisor < s.num_embeddings and s.rows < s.num_embeddings
                assert s.divisor * s.quotient_rows >= s.num_embeddings  # every id its own (q, r) pair
    small = qr_plan(num, 16, 4.0).layouts
    assert small[-1].sharing == Sharing.FULL  # 3 ids: no QR layout stores fewer than 3 rows
    # "d" (50 ids) cannot reach a 10x share (5 rows; its smallest QR layout has 15), the others give it room.
    d = qr_plan(num, 16, 10.0).layouts[3]
    assert d.rows == 15 and d.sharing == Sharing.QR
    # Smallest layouts: about 2 sqrt(N) rows each; 1753 ids cannot go below 64 + 45 + 29 + 15 + 3 = 156 rows.
    with pytest.raises(ValueError, match=r"highest reachable CR is 11\.237") as e:
        qr_plan(num, 16, 20.0)
    assert "['a', 'b', 'c', 'd', 'e']" in str(e.value)
    # Within CR_TOLERANCE of the reachable rate a plan is returned, reporting the rate it reaches.
    near = qr_plan(num, 16, 11.4)
    assert near.cr == pytest.approx(1753 / 156) and near.cr < 11.4
    assert near.summary()["cr"] == near.cr and near.summary()["target_cr"] == 11.4


LR, BATCH, SEED, STD = 0.5, 12, 3, 0.1


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.provider = HashedEmbeddingProvider(LAYOUTS, K, device=torch.device("meta"))
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, kjt):
        return self.provider(kjt).values() * self.scale


def _sharded_step(rank: int, world: int):
    ctx = init_distributed("cpu")
    torch.manual_seed(0)
    net = Net()
    cfg = TrainConfig(sharding="table_wise", embedding_optimizer="sgd", embedding_lr=LR, device="cpu")
    dmp = shard_model(net, cfg, ctx)
    init_tables(dmp, SEED, STD)
    shift_tables(dmp, net.provider.init_shifts())
    optim = build_optimizer(dmp, cfg, ctx)
    lo, hi = rank * BATCH // world, (rank + 1) * BATCH // world
    bags = make_bags(7, BATCH)
    target = torch.randn(BATCH, len(NUM) * K, generator=torch.Generator().manual_seed(8))
    optim.zero_grad()
    out = dmp(make_kjt(bags, slice(lo, hi)))
    (out * target[lo:hi]).sum(1).mean().backward()
    optim.step()
    pieces = {k: [(t.detach().clone(), r, c) for t, r, c in local_pieces(v)] for k, v in table_state(dmp)}
    return out.detach(), pieces


@pytest.mark.multiprocess
def test_sharded_two_ranks_forward_and_sgd_step_match_reference():
    results = run_ranks(2, _sharded_step)
    ref_net = HashedEmbeddingProvider(LAYOUTS, K, device=torch.device("cpu"))
    keys = {k.split(".")[-2]: k for k, _ in table_state(ref_net)}
    shifts = ref_net.init_shifts()
    tables = {
        name: table_rows(SEED, f"provider.{keys[name]}", (0, n), (0, K), K, STD) + shifts.get(name, 0.0)
        for name, n in shapes().items()
    }
    emb = reference_modules(tables)
    bags = make_bags(7, BATCH)
    target = torch.randn(BATCH, len(NUM) * K, generator=torch.Generator().manual_seed(8))
    ref = reference(emb, bags, QRCombine.MULT)
    (ref * target).sum(1).mean().backward()
    torch.testing.assert_close(torch.cat([r[0] for r in results]), ref.detach(), **TOL)
    # One fused SGD step on the global-mean gradient, wherever the shards live.
    expect = {name: (emb[name].weight - LR * emb[name].weight.grad).detach() for name in tables}
    seen = set()
    for _, pieces in results:
        for key, parts in pieces.items():
            name = key.split(".")[-2]
            for t, (r0, r1), (c0, c1) in parts:
                torch.testing.assert_close(t, expect[name][r0:r1, c0:c1], **TOL)
                seen.add(name)
    assert seen == set(expect)
    assert all(pieces for _, pieces in results) and all(any(p for p in pieces.values()) for _, pieces in results)
