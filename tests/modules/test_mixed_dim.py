"""Mixed-dimension (MDE) provider against a per-id reference: forward, table and projection gradients,
unsharded and sharded over two gloo processes with the fused SGD table optimizer; layout from a
DimAssignment; params and bytes with projections; a tiny end-to-end retraining run (slow)."""

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor, KeyedTensor

from recdim.config import ModelConfig, TrainConfig
from recdim.layout.blocks import per_table_blocks
from recdim.layout.dims import DimAssignment, Projection, budget_for_cr
from recdim.modules.mixed_dim import MixedDimensionProvider, Segment, blocks_from_assignment, mixed_dim_provider_factory
from recdim.modules.table_init import init_tables, local_pieces, table_rows, table_state
from recdim.modules.uniform import table_name
from recdim.search.baselines.mde import mde_dims
from recdim.train.distributed import build_optimizer, init_distributed, shard_model
from tests.dist_utils import run_ranks

K = 8
TOL = dict(rtol=1e-5, atol=1e-5)
NUM = {"u": 37, "tags": 11, "i": 23, "w": 9}
MULTI = ("tags", "w")
# Per feature: (stop, dim, projected). Covers projected blocks (two adjacent ones of one width), d = K as
# is, d = 0 (reads zeros), an unprojected d < K (zero padding), and an empty block.
SPEC = {
    "u": [(5, 8, False), (20, 4, True), (37, 4, True)],
    "tags": [(3, 4, True), (3, 4, True), (11, 8, False)],
    "i": [(10, 8, False), (16, 4, True), (23, 0, False)],
    "w": [(4, 4, False), (9, 4, True)],
}


def assignment() -> DimAssignment:
    dims, projs = {}, []
    for f, spec in SPEC.items():
        d, lo = torch.zeros(NUM[f], dtype=torch.int64), 0
        for hi, dim, projected in spec:
            d[lo:hi] = dim
            if projected and hi > lo:
                projs.append(Projection(f, lo, hi, dim))
            lo = hi
        dims[f] = d
    return DimAssignment(dims, K, method="mde", projections=tuple(projs))


def blocks() -> List[Segment]:
    return blocks_from_assignment(assignment())


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


def keyed_blocks(bl: List[Segment]):
    """``(block, key)`` in provider order (``<f>__b<j>``, j over f's non-empty blocks)."""
    out, seen = [], {}
    for b in bl:
        if b.rows:
            out.append((b, f"{b.feature}__b{seen.get(b.feature, 0)}"))
            seen[b.feature] = seen.get(b.feature, 0) + 1
    return out


def reference(tables, projs, bl, bags, pooling="sum", weights=None) -> torch.Tensor:
    """Per-id loops over dense per-block matrices: e_i = W_b[i - start_b] @ P_b (padded / as is / zeros)."""
    kb = keyed_blocks(bl)
    B = len(next(iter(bags.values())))
    rows = []
    for s in range(B):
        parts = []
        for f in NUM:
            v = torch.zeros(K)
            for t, i in enumerate(bags[f][s]):
                b, key = next((b, key) for b, key in kb if b.feature == f and b.start <= i < b.stop)
                if b.dim == 0:
                    continue
                row = tables[key][i - b.start]
                e = row @ projs[key] if b.projected else torch.cat([row, torch.zeros(K - b.dim)])
                v = v + e * (weights[f][s][t] if weights is not None else 1.0)
            parts.append(v / max(len(bags[f][s]), 1) if pooling == "mean" else v)
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def random_tables(bl, seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {key: torch.randn(b.rows, b.dim, generator=g) for b, key in keyed_blocks(bl) if b.dim > 0}


def test_layout_from_assignment_params_and_bytes():
    a = assignment()
    bl = blocks()
    assert [(b.feature, b.start, b.stop, b.dim, b.projected) for b in bl if b.feature == "u"] == [
        ("u", 0, 5, 8, False),
        ("u", 5, 20, 4, True),
        ("u", 20, 37, 4, True),
    ]
    assert ("tags", 3, 3) not in [(b.feature, b.start, b.stop) for b in bl]  # empty block: no rows, no cut
    p = MixedDimensionProvider(NUM, K, bl, device=torch.device("cpu"))
    names = {c.name: (c.num_embeddings, c.embedding_dim) for c in p.tables}
    assert names["t_u__b1"] == (15, 4) and names["t_i__b0"] == (10, 8) and "t_i__b2" not in names  # d = 0: no table
    assert p.projection("u__b1").shape == (4, K) and p.projection("u__b0") is None and p.projection("w__b0") is None
    assert p.embedding_params() == a.params and p.projection_params() == a.projection_params == 5 * 4 * K
    assert p.embedding_bytes() == 4 * a.params + 8 * (len(p.blocks) + len(NUM))

    # Rows of a projected block must share its width.
    d = a.dims["u"].clone()
    d[6] = 8
    with pytest.raises(ValueError, match="must all have dimension 4"):
        blocks_from_assignment(DimAssignment({**a.dims, "u": d}, K, projections=a.projections))
    with pytest.raises(ValueError, match="tile"):
        MixedDimensionProvider(NUM, K, bl[1:], device=torch.device("cpu"))
    with pytest.raises(ValueError, match="only a width in"):
        MixedDimensionProvider({"x": 4}, K, [Segment("x", 0, 4, 8, True)], device=torch.device("cpu"))


def test_mde_assignment_builds_a_provider_with_its_parameters():
    g = np.random.default_rng(0)
    num = {f: 20 * n for f, n in NUM.items()}
    counts = {f: np.sort(g.zipf(1.5, n))[::-1].copy() for f, n in num.items()}
    a = mde_dims(counts, per_table_blocks(num, 3), K, budget_for_cr(num, K, 1.5), alpha=0.5)
    assert a.projections and len(set(a.dims["u"].tolist())) > 1
    p = mixed_dim_provider_factory(blocks_from_assignment(a), K)(
        ModelConfig(embedding_dim=K), num, False, torch.device("cpu")
    )
    assert len(p.blocks) == 3 * len(num) and len(p.projections) > 0
    assert p.embedding_params() == a.params <= budget_for_cr(num, K, 1.5)
    with pytest.raises(ValueError, match="no dimension blocks"):
        mixed_dim_provider_factory(blocks_from_assignment(a), K)(
            ModelConfig(embedding_dim=K), {"z": 3}, False, torch.device("cpu")
        )
    with pytest.raises(ValueError, match="K = 8"):
        mixed_dim_provider_factory(blocks_from_assignment(a), K)(
            ModelConfig(embedding_dim=16), num, False, torch.device("cpu")
        )


@pytest.mark.parametrize("pooling,weighted", [("sum", False), ("mean", False), ("sum", True), ("mean", True)])
def test_forward_and_gradients_match_reference(pooling, weighted):
    bl = blocks()
    p = MixedDimensionProvider(NUM, K, bl, pooling=pooling, is_weighted=weighted, device=torch.device("cpu"))
    tables = random_tables(bl, 1)
    with torch.no_grad():
        for key, w in tables.items():
            p.ebc.embedding_bags[table_name(key)].weight.copy_(w)
    bags = make_bags(3, 24)
    ws = make_weights(bags, 4) if weighted else None
    out = p(make_kjt(bags, slice(None), ws)).values()
    leaf_t = {k: v.clone().requires_grad_(True) for k, v in tables.items()}
    leaf_p = {
        key: p.projection(key).detach().clone().requires_grad_(True) for b, key in keyed_blocks(bl) if b.projected
    }
    ref = reference(leaf_t, leaf_p, bl, bags, pooling, ws)
    torch.testing.assert_close(out, ref, **TOL)
    assert any(len(x) == 0 for x in bags["tags"]) and any(len(x) > 1 for x in bags["tags"])

    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * proj).sum().backward()
    (ref * proj).sum().backward()
    for key, leaf in leaf_t.items():
        g = p.ebc.embedding_bags[table_name(key)].weight.grad
        g = torch.zeros_like(leaf) if g is None else (g.to_dense() if g.is_sparse else g)
        torch.testing.assert_close(g, leaf.grad, **TOL)
    for key, leaf in leaf_p.items():
        w, k = p.projection_index(key)
        torch.testing.assert_close(p.projections[w].grad[k], leaf.grad, **TOL)

    eff = p.effective_weights({table_name(k): v for k, v in tables.items()})
    assert eff["i"][16:].abs().sum() == 0 and torch.equal(eff["w"][:4, 4:], torch.zeros(4, K - 4))


class ReversedKeys(torch.nn.Module):
    """An EBC whose output lists its keys in reverse (as a sharded EBC may reorder them)."""

    def __init__(self, ebc):
        super().__init__()
        self.ebc = ebc

    def forward(self, kjt):
        kt = self.ebc(kjt)
        d = kt.to_dict()
        keys = list(reversed(kt.keys()))
        return KeyedTensor(
            keys=keys, length_per_key=[d[k].size(1) for k in keys], values=torch.cat([d[k] for k in keys], 1)
        )


def test_any_output_key_order_of_the_ebc():
    bl = blocks()
    p = MixedDimensionProvider(NUM, K, bl, pooling="mean", device=torch.device("cpu"))
    tables = random_tables(bl, 2)
    with torch.no_grad():
        for key, w in tables.items():
            p.ebc.embedding_bags[table_name(key)].weight.copy_(w)
    bags = make_bags(9, 16)
    plain = p(make_kjt(bags, slice(None))).values()
    p.ebc = ReversedKeys(p.ebc)
    out = p(make_kjt(bags, slice(None))).values()
    assert p._layout is not None and p._layout.perm is not None
    torch.testing.assert_close(out, plain, **TOL)
    leaf_t = {k: v.clone().requires_grad_(True) for k, v in tables.items()}
    leaf_p = {
        key: p.projection(key).detach().clone().requires_grad_(True) for b, key in keyed_blocks(bl) if b.projected
    }
    ref = reference(leaf_t, leaf_p, bl, bags, "mean")
    torch.testing.assert_close(out, ref, **TOL)
    out.pow(2).sum().backward()
    ref.pow(2).sum().backward()
    for key, leaf in leaf_p.items():
        w, k = p.projection_index(key)
        torch.testing.assert_close(p.projections[w].grad[k], leaf.grad, **TOL)


LR, BATCH, SEED, STD = 0.5, 12, 3, 0.1


class Net(torch.nn.Module):
    def __init__(self, bl):
        super().__init__()
        self.provider = MixedDimensionProvider(NUM, K, bl, device=torch.device("meta"))
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, kjt):
        return self.provider(kjt).values() * self.scale


def _sharded_step(rank: int, world: int):
    ctx = init_distributed("cpu")
    torch.manual_seed(0)
    net = Net(blocks())
    cfg = TrainConfig(sharding="table_wise", embedding_optimizer="sgd", embedding_lr=LR, device="cpu")
    dmp = shard_model(net, cfg, ctx)
    init_tables(dmp, SEED, STD)
    optim = build_optimizer(dmp, cfg, ctx)
    projs = {k: v for k, v in dmp.named_parameters() if "projections" in k}
    init_p = {k: v.detach().clone() for k, v in projs.items()}
    lo, hi = rank * BATCH // world, (rank + 1) * BATCH // world
    bags = make_bags(7, BATCH)
    target = torch.randn(BATCH, len(NUM) * K, generator=torch.Generator().manual_seed(8))
    optim.zero_grad()
    out = dmp(make_kjt(bags, slice(lo, hi)))
    (out * target[lo:hi]).sum(1).mean().backward()
    grads = {k: v.grad.detach().clone() for k, v in projs.items()}
    optim.step()
    pieces = {k: [(t.detach().clone(), r, c) for t, r, c in local_pieces(v)] for k, v in table_state(dmp)}
    return out.detach(), pieces, init_p, grads


@pytest.mark.multiprocess
def test_sharded_two_ranks_forward_gradients_and_sgd_step_match_reference():
    bl = blocks()
    results = run_ranks(2, _sharded_step)
    kb = keyed_blocks(bl)
    prefix = "provider.ebc.embedding_bags."
    tables = {
        key: table_rows(SEED, f"{prefix}{table_name(key)}.weight", (0, b.rows), (0, b.dim), b.dim, STD)
        for b, key in kb
        if b.dim > 0
    }
    init_p = results[0][2]
    assert init_p and all(torch.equal(init_p[k], results[1][2][k]) for k in init_p)
    param_of = {k.split(".")[-1]: k for k in init_p}  # "w4" -> its state key, [n, 4, K]
    layout = MixedDimensionProvider(NUM, K, bl, device=torch.device("cpu"))
    at = {key: layout.projection_index(key) for b, key in kb if b.projected}
    leaf_p = {key: init_p[param_of[w]][j].clone().requires_grad_(True) for key, (w, j) in at.items()}
    leaf_t = {k: v.clone().requires_grad_(True) for k, v in tables.items()}
    bags = make_bags(7, BATCH)
    target = torch.randn(BATCH, len(NUM) * K, generator=torch.Generator().manual_seed(8))
    ref = reference(leaf_t, leaf_p, bl, bags)
    (ref * target).sum(1).mean().backward()
    torch.testing.assert_close(torch.cat([r[0] for r in results]), ref.detach(), **TOL)

    # Projections: the same DDP-averaged gradient on both ranks, the reference's.
    for _, _, _, grads in results:
        for key, (w, j) in at.items():
            torch.testing.assert_close(grads[param_of[w]][j], leaf_p[key].grad, **TOL)
    # Tables: one fused SGD step, wherever their shards live.
    expect = {table_name(k): (v - LR * v.grad).detach() for k, v in leaf_t.items()}
    seen = set()
    for _, pieces, _, _ in results:
        for key, parts in pieces.items():
            name = key.split(".")[-2]
            for t, (r0, r1), (c0, c1) in parts:
                torch.testing.assert_close(t, expect[name][r0:r1, c0:c1], **TOL)
                seen.add(name)
    assert seen == set(expect)
    assert all(any(parts for parts in pieces.values()) for _, pieces, _, _ in results)  # both ranks hold tables


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_run_retrain_dims_end_to_end(tmp_path):
    from recdim.config import load
    from recdim.data.prepared import PreparedDataset
    from recdim.data.preprocess import prepare
    from recdim.retrain.mixed_dim import mixed_dim_session, read_layout, run_retrain_dims
    from recdim.search.baselines.methods import baseline_dims
    from recdim.train.model_io import load_model

    data = tmp_path / "data"
    sets = [
        f"prepare.output={data}",
        "prepare.synthetic.rows=6000",
        "train.epochs=1",
        "train.max_steps=8",
        "train.batch_size=256",
        "train.progress=false",
        "train.device=cpu",
        "search.baseline.num_blocks=2",
        "search.baseline.blocking=per_table",
    ]
    cfg = load(str(ROOT / "configs" / "demo.toml"), tuple(sets))
    prepare(cfg.prepare)
    ds = PreparedDataset(cfg.data_path)
    counts = {f: ds.counts(f) for f in ds.feature_names(cfg.data.features)}
    a = baseline_dims("mde", cfg.search.baseline, counts, cfg.model.embedding_dim, 2.0)
    assert a.projections
    out = tmp_path / "mde"
    results = run_retrain_dims(cfg, a, out)

    saved = json.loads((out / "results.json").read_text())
    for k in ("val", "test", "params", "bytes", "retrain_time_s", "prune", "plan_bytes"):
        assert k in saved
    assert set(saved["prune"]) >= {"method", "cr", "kept", "total", "info"}
    assert saved["prune"]["method"] == "mde" and saved["prune"]["cr"] >= 2.0
    assert saved["params"] == a.params == saved["prune"]["kept"] and saved["prune"]["total"] == a.uniform_params
    assert saved["bytes"] == saved["plan_bytes"]["total"] and saved["plan_bytes"]["projections"] == a.projection_bytes

    # The saved model reloads into the layout it was trained on and scores test as the run did.
    bl, meta = read_layout(out)
    assert meta["method"] == "mde" and bl == blocks_from_assignment(a)
    session = mixed_dim_session(cfg, bl, None)
    load_model(session.dmp, out)
    test = session.trainer.evaluate(session.eval_loader("test"))
    for k, v in results["test"].items():
        assert abs(test[k] - v) <= 1e-6, (k, test[k], v)
