"""PEP threshold provider against a per-id loop reference: output, table and threshold gradients,
unsharded and sharded over 2 gloo ranks (fused SGD), plus shard-wise counting and mask gathering.

Every case runs on both lookup layouts: ``per_id`` (every feature in the EmbeddingCollection) and
``mixed`` (the single-valued features "b" and "c" pooled in the EmbeddingBagCollection, the bag feature
"a" per id; "a" sits between them, so the provider reorders its input and output)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recdim.config import TrainConfig
from recdim.modules.table_init import init_tables, local_pieces, table_rows, table_state
from recdim.modules.threshold import (
    UNIQUE_FRACTION,
    FeatureDimensionThreshold,
    ThresholdEmbeddingProvider,
    make_thresholds,
    pool_rows,
)
from recdim.search.pep import count_nonzeros, gather_masks
from tests.dist_utils import run_ranks

K = 8
NUM = {"b": 7, "a": 11, "c": 5}  # "a": multi-valued bags (some empty), "b" and "c": single-valued
FEATURES = list(NUM)
F = len(FEATURES)
SINGLE = {"per_id": (), "mixed": ("b", "c")}
SEED, STD, LR, OFFSET = 3, 0.1, 0.5, 0.25
GRANULARITIES = ["global", "dimension", "feature", "feature_dimension"]
Bags = Dict[str, List[List[int]]]
Weights = Dict[str, List[List[float]]]


def fill(seed: int, key: str, rows: Tuple[int, int], cols: Tuple[int, int], full_dim: int, std: float) -> torch.Tensor:
    """Table init; in [N, 2K] tables the odd (threshold) columns are moved to about -3 +- 0.4."""
    out = table_rows(seed, key, rows, cols, full_dim, std)
    if full_dim == 2 * K:
        odd = torch.arange(cols[0], cols[1]) % 2 == 1
        out[:, odd] = -3.0 + 4.0 * out[:, odd]
    return out


def full_tables(provider: ThresholdEmbeddingProvider) -> Dict[str, torch.Tensor]:
    """The initial tables (``fill`` under each table's state-dict key), whole, as leaves for autograd."""
    width = K * provider.thresholds.columns_per_value
    return {
        f: fill(SEED, provider.table_key(f"t_{f}"), (0, n), (0, width), width, STD).requires_grad_()
        for f, n in NUM.items()
    }


def dense_s(granularity: str) -> Optional[torch.Tensor]:
    return {
        "global": torch.tensor([-3.0]),
        "dimension": torch.linspace(-4.0, -2.0, K),
        "feature": torch.tensor([-3.5, -2.5, -3.0]),
    }.get(granularity)


def make_bags(batch: int, seed: int) -> Bags:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (batch,), generator=g)
    lengths[1] = 0
    a = [torch.randint(0, NUM["a"], (int(n),), generator=g).tolist() for n in lengths]
    b = [[int(torch.randint(0, NUM["b"], (1,), generator=g))] for _ in range(batch)]
    c = [[int(torch.randint(0, NUM["c"], (1,), generator=g))] for _ in range(batch)]
    return {"a": a, "b": b, "c": c}


def make_weights(bags: Bags, seed: int) -> Weights:
    g = torch.Generator().manual_seed(seed)
    return {f: [[float(x) for x in torch.rand(len(bag), generator=g) + 0.5] for bag in bags[f]] for f in FEATURES}


def to_kjt(
    bags: Bags, lo: int, hi: int, weights: Optional[Weights] = None, keys: List[str] = FEATURES
) -> KeyedJaggedTensor:
    values, lengths, w = [], [], []
    for f in keys:
        for i in range(lo, hi):
            values += bags[f][i]
            lengths.append(len(bags[f][i]))
            if weights is not None:
                w += weights[f][i]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys),
        values=torch.tensor(values, dtype=torch.long),
        lengths=torch.tensor(lengths, dtype=torch.int32),
        weights=torch.tensor(w) if weights is not None else None,
    )


def reference(
    tables: Dict[str, torch.Tensor],
    s: Optional[torch.Tensor],
    granularity: str,
    bags: Bags,
    mean: bool,
    weights: Optional[Weights] = None,
) -> torch.Tensor:
    """Per id: split value / threshold, sign(V) relu(|V| - sigmoid(s + offset)), weight, sum or mean."""
    batch = len(bags["a"])
    out = []
    for fi, f in enumerate(FEATURES):
        rows = []
        for b in range(batch):
            acc = torch.zeros(K)
            for j, i in enumerate(bags[f][b]):
                row = tables[f][i]
                if granularity == "feature_dimension":
                    v, t = row[0::2], row[1::2]
                else:
                    v, t = row, (s[fi] if granularity == "feature" else s)
                pruned = torch.sign(v) * torch.relu(v.abs() - torch.sigmoid(t + OFFSET))
                acc = acc + pruned * (weights[f][b][j] if weights is not None else 1.0)
            if mean and bags[f][b]:
                acc = acc / len(bags[f][b])
            rows.append(acc)
        out.append(torch.stack(rows))
    return torch.cat(out, dim=1)


def make_provider(
    granularity: str,
    pooling: str,
    device: Optional[torch.device] = None,
    weighted: bool = False,
    layout: str = "per_id",
    gate: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
    unique_fraction: float = UNIQUE_FRACTION,
) -> ThresholdEmbeddingProvider:
    thresholds = make_thresholds(granularity, FEATURES, K, -3.0)
    return ThresholdEmbeddingProvider(
        NUM,
        K,
        thresholds,
        gate,
        pooling=pooling,
        is_weighted=weighted,
        device=device,
        single_valued=SINGLE[layout],
        unique_fraction=unique_fraction,
    )


def set_dense_s(provider: ThresholdEmbeddingProvider, granularity: str) -> None:
    with torch.no_grad():
        s = dense_s(granularity)
        if s is not None:
            provider.thresholds.s.copy_(s)
        provider.threshold_offset.fill_(OFFSET)


def test_pooling_basics() -> None:
    rows = torch.arange(12.0).view(4, 3)
    torch.testing.assert_close(
        pool_rows(rows, torch.tensor([2, 0, 2]), mean=True), torch.tensor([[1.5, 2.5, 3.5], [0, 0, 0], [7.5, 8.5, 9.5]])
    )
    assert pool_rows(rows, torch.ones(4, dtype=torch.int32)) is rows  # single-valued fast path


@pytest.mark.parametrize("unique_fraction", [0.0, 1.0])
@pytest.mark.parametrize("layout", list(SINGLE))
@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_matches_reference_unsharded(granularity: str, pooling: str, layout: str, unique_fraction: float) -> None:
    """Every path: per id, pooled with every bag looked up (``unique_fraction`` 0), pooled once per distinct
    id (1: the batch's repeated ids are looked up, thresholded and back-propagated once)."""
    weighted = granularity != "dimension" and pooling == "sum"
    provider = make_provider(granularity, pooling, weighted=weighted, layout=layout, unique_fraction=unique_fraction)
    init_tables(provider, SEED, STD, fill=fill)
    set_dense_s(provider, granularity)
    bags = make_bags(6, seed=1)
    weights = make_weights(bags, seed=2) if weighted else None
    r = torch.randn(6, F * K, generator=torch.Generator().manual_seed(3))

    out = provider(to_kjt(bags, 0, 6, weights)).values()
    (out * r).sum().backward()

    tables = full_tables(provider)
    s = dense_s(granularity)
    s = s.clone().requires_grad_() if s is not None else None
    ref = reference(tables, s, granularity, bags, pooling == "mean", weights)
    (ref * r).sum().backward()

    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for f in FEATURES:
        grad = provider.get_parameter(provider.table_key(f"t_{f}")).grad
        torch.testing.assert_close(grad, tables[f].grad, atol=1e-5, rtol=1e-5)
    if s is not None:
        torch.testing.assert_close(provider.thresholds.s.grad, s.grad, atol=1e-5, rtol=1e-5)
        assert s.grad.abs().sum() > 0
    # the case is not degenerate: some values are pruned, some survive
    assert 0.0 < float((ref == 0).float().mean()) < 0.9


DIST_CASES = [(g, "sum", layout, False, UNIQUE_FRACTION) for layout in SINGLE for g in GRANULARITIES] + [
    ("dimension", "mean", "per_id", False, UNIQUE_FRACTION),
    ("dimension", "mean", "mixed", False, UNIQUE_FRACTION),
    ("feature_dimension", "sum", "mixed", True, UNIQUE_FRACTION),
    # once per distinct id: the ranks agree on one stride for the sharded lookup
    ("feature_dimension", "sum", "mixed", True, 1.0),
    ("feature", "mean", "mixed", False, 1.0),
]


def _dist_cases(rank: int, world: int) -> List[Dict[str, object]]:
    """Each case sharded table-wise with fused SGD: local output, threshold gradient, the table after one
    step, and the global non-zero count and gathered masks of the initial tables."""
    from recdim.train.distributed import init_distributed, shard_model

    ctx = init_distributed("cpu")
    bags = make_bags(8, seed=5)
    weights = make_weights(bags, seed=7)
    r = torch.randn(8, F * K, generator=torch.Generator().manual_seed(6))
    lo, hi = rank * 4, rank * 4 + 4
    results = []
    for granularity, pooling, layout, weighted, unique_fraction in DIST_CASES:
        provider = make_provider(
            granularity, pooling, torch.device("meta"), weighted, layout, unique_fraction=unique_fraction
        )
        cfg = TrainConfig(embedding_optimizer="sgd", embedding_lr=LR, sharding="table_wise", device="cpu")
        dmp = shard_model(provider, cfg, ctx)
        init_tables(dmp, SEED, STD, fill=fill)
        live = dmp.module
        set_dense_s(live, granularity)
        nnz = count_nonzeros(live)
        masks = gather_masks(live)
        out = dmp(to_kjt(bags, lo, hi, weights if weighted else None)).values()
        ((out * r[lo:hi]).sum() / (hi - lo)).backward()
        pieces = [
            (key, rows, cols, t.detach().clone()) for key, v in table_state(dmp) for t, rows, cols in local_pieces(v)
        ]
        s_grad = live.thresholds.s.grad.clone() if granularity != "feature_dimension" else None
        results.append(dict(out=out.detach(), s_grad=s_grad, pieces=pieces, nnz=nnz, masks=masks))
    return results


@pytest.mark.multiprocess
def test_matches_reference_sharded_two_ranks() -> None:
    ranks = run_ranks(2, _dist_cases)
    bags = make_bags(8, seed=5)
    weights = make_weights(bags, seed=7)
    r = torch.randn(8, F * K, generator=torch.Generator().manual_seed(6))
    for case, (granularity, pooling, layout, weighted, _) in enumerate(DIST_CASES):
        provider = make_provider(granularity, pooling, device=torch.device("meta"), layout=layout)
        tables = full_tables(provider)
        s = dense_s(granularity)
        s = s.clone().requires_grad_() if s is not None else None
        ref = reference(tables, s, granularity, bags, pooling == "mean", weights if weighted else None)
        ((ref * r).sum() / 8).backward()
        keys = {provider.table_key(f"t_{f}"): f for f in FEATURES}
        for rank, res in enumerate(ranks):
            res = res[case]
            torch.testing.assert_close(res["out"], ref[rank * 4 : rank * 4 + 4].detach(), atol=1e-5, rtol=1e-5)
            if s is not None:
                torch.testing.assert_close(res["s_grad"], s.grad, atol=1e-5, rtol=1e-5)
            for key, (r0, r1), (c0, c1), piece in res["pieces"]:
                f = keys[key]  # the sharded model keeps each table's key (and so its initial values)
                stepped = (tables[f] - LR * tables[f].grad).detach()[r0:r1, c0:c1]
                torch.testing.assert_close(piece, stepped, atol=1e-5, rtol=1e-5)
        # shard-wise counting and mask gathering, against the whole initial tables
        with torch.no_grad():
            masks = {}
            for fi, f in enumerate(FEATURES):
                t = tables[f]
                v, thr = (
                    (t[:, 0::2], t[:, 1::2])
                    if granularity == "feature_dimension"
                    else (t, s[fi] if granularity == "feature" else s)
                )
                masks[f"t_{f}"] = v.abs() > torch.sigmoid(thr + OFFSET)
        total = sum(n * K for n in NUM.values())
        expected = sum(int(m.sum()) for m in masks.values())
        assert ranks[0][case]["nnz"] == ranks[1][case]["nnz"] == (expected, total)
        assert 0 < expected < total
        assert ranks[1][case]["masks"] is None
        for name, m in masks.items():
            assert torch.equal(ranks[0][case]["masks"][name], m), (granularity, layout, name)


@pytest.mark.parametrize("layout", list(SINGLE))
def test_feature_dimension_table_layout(layout: str) -> None:
    provider = make_provider("feature_dimension", "sum", layout=layout)
    assert isinstance(provider.thresholds, FeatureDimensionThreshold)
    assert [t.embedding_dim for t in provider.tables] == [2 * K] * F
    assert provider.embedding_params() == sum(NUM.values()) * K
    assert provider.embedding_bytes() == 4 * sum(NUM.values()) * 2 * K
    assert provider.threshold_parameters() == [] and provider.arch_parameters() == []
    with pytest.raises(ValueError):
        provider.thresholds.split_piece(0, torch.zeros(3, 6), (1, 7))


def test_mixed_layout_tables_and_keys() -> None:
    """Single-valued features sit in the EBC, bags in the EC; tables keep their names and feature order."""
    provider = make_provider("feature_dimension", "sum", layout="mixed")
    assert provider.bag_features == ["b", "c"] and provider.seq_features == ["a"]
    assert list(provider.ebc.embedding_bags) == ["t_b", "t_c"] and list(provider.ec.embeddings) == ["t_a"]
    assert [t.name for t in provider.tables] == ["t_b", "t_a", "t_c"]
    assert [provider.feature_of_table(t) for t in ("t_b", "t_a", "t_c")] == [0, 1, 2]
    assert provider.table_key("t_b") == "ebc.embedding_bags.t_b.weight"
    assert provider.table_key("t_a") == "ec.embeddings.t_a.weight"
    assert {provider.table_key(t.name) for t in provider.tables} <= set(provider.state_dict())
    assert provider.embedding_params() == sum(NUM.values()) * K
    with pytest.raises(KeyError):
        provider.table_key("t_x")
    with pytest.raises(ValueError, match="unknown features"):
        ThresholdEmbeddingProvider(NUM, K, make_thresholds("global", FEATURES, K, -3.0), single_valued=["x"])
    per_id = make_provider("global", "sum")
    assert per_id.ebc is None and per_id.table_key("t_b") == "ec.embeddings.t_b.weight"
    pooled = ThresholdEmbeddingProvider({"b": 7}, K, make_thresholds("global", ["b"], K, -3.0), single_valued=["b"])
    assert pooled.ec is None


def test_input_key_order_does_not_matter() -> None:
    provider = make_provider("feature", "sum", layout="mixed")
    init_tables(provider, SEED, STD, fill=fill)
    bags = make_bags(5, seed=4)
    expected = provider(to_kjt(bags, 0, 5)).values()
    for keys in (["a", "b", "c"], ["c", "a", "b"]):
        torch.testing.assert_close(provider(to_kjt(bags, 0, 5, keys=keys)).values(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [[2, 3], []])
def test_single_valued_feature_with_other_bag_lengths_raises(bad: List[int]) -> None:
    """A bag of several ids (or none) on the pooled path is wrong input, never silently summed."""
    provider = make_provider("dimension", "sum", layout="mixed")
    bags = make_bags(4, seed=1)
    bags["c"][2] = bad
    with pytest.raises(ValueError, match=r"\['c'\] are declared single-valued"):
        provider(to_kjt(bags, 0, 4))


@pytest.mark.parametrize("layout", list(SINGLE))
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_fused_threshold_equals_composite(granularity: str, layout: str) -> None:
    """The fused soft threshold (known gates) gives the autograd composite's outputs and gradients; any
    other gate takes the composite."""
    bags = make_bags(6, seed=8)
    r = torch.randn(6, F * K, generator=torch.Generator().manual_seed(9))
    grads = []
    for gate in (torch.sigmoid, lambda x: torch.sigmoid(x)):
        provider = make_provider(granularity, "mean", layout=layout, gate=gate)
        assert provider._fused == (gate is torch.sigmoid)
        init_tables(provider, SEED, STD, fill=fill)
        set_dense_s(provider, granularity)
        out = provider(to_kjt(bags, 0, 6)).values()
        (out * r).sum().backward()
        grads.append((out.detach(), [p.grad for p in provider.parameters()]))
    (out_fused, g_fused), (out_plain, g_plain) = grads
    torch.testing.assert_close(out_fused, out_plain, rtol=0, atol=0)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_count_kept_whole_and_column_pieces(granularity: str) -> None:
    """Counting whole tables at once equals counting column shards one by one and the masks' sum."""
    provider = make_provider(granularity, "sum", layout="mixed")
    init_tables(provider, SEED, STD, fill=fill)
    set_dense_s(provider, granularity)
    weights = {t.name: provider.get_parameter(provider.table_key(t.name)).detach() for t in provider.tables}
    width = K * provider.thresholds.columns_per_value
    whole = [(provider.feature_of_table(n), w, (0, width)) for n, w in weights.items()]
    halves = [(f, w[:, c0:c1], (c0, c1)) for f, w, _ in whole for c0, c1 in ((0, width // 2), (width // 2, width))]
    expected = sum(int(provider.keep_mask(f, w, cols)[0].sum()) for f, w, cols in whole)
    assert 0 < expected < sum(NUM.values()) * K
    for pieces in (whole, halves, whole[:1] + halves[2:]):
        assert int(provider.count_kept(pieces)) == expected


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_effective_weights_are_single_id_outputs_mixed(granularity: str) -> None:
    """On both paths, ``effective_weights`` (from whole tables by name) is what one id reads."""
    from recdim.modules.table_init import full_tables as whole_tables

    provider = make_provider(granularity, "sum", layout="mixed")
    init_tables(provider, SEED, STD, fill=fill)
    set_dense_s(provider, granularity)
    eff = provider.effective_weights(whole_tables(provider))
    n = max(NUM.values())
    bags = {f: [[i % NUM[f]] for i in range(n)] for f in FEATURES}
    out = provider(to_kjt(bags, 0, n)).to_dict()
    for f, rows in NUM.items():
        torch.testing.assert_close(out[f][:rows], eff[f], rtol=0, atol=1e-6)


def dense_reference(
    v: Dict[str, torch.Tensor], s: Dict[str, torch.Tensor], bags: Bags, offset: float, mean: bool
) -> torch.Tensor:
    """Per bag, with dense V and s tensors: sum (or mean) of sign(V) relu(|V| - sigmoid(s + offset))."""
    out = []
    for f in FEATURES:
        rows = []
        for bag in bags[f]:
            acc = torch.zeros(K)
            for i in bag:
                acc = acc + torch.sign(v[f][i]) * torch.relu(v[f][i].abs() - torch.sigmoid(s[f][i] + offset))
            rows.append(acc / len(bag) if mean and bag else acc)
        out.append(torch.stack(rows))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "sgd"])
@pytest.mark.parametrize("unique_fraction", [0.0, 1.0])
@pytest.mark.parametrize("layout", list(SINGLE))
def test_training_trajectory_matches_dense_reference(layout: str, unique_fraction: float, optimizer: str) -> None:
    """Five fused training steps of the table layout ([V0, s0, V1, s1, ...] rows, one lookup, the fused
    optimizer updating V and s in the backward) under a moving offset, against dense V and s tensors
    trained by the same update written out (row-wise Adagrad: one accumulator per table row, the row's
    values and thresholds together; or SGD). Values and thresholds agree to float32 tolerance (rtol 1e-4,
    atol 1e-6) after every step, and so does the survivor count (exactly, but for values within 1e-5 of
    their threshold)."""
    from recdim.train.distributed import init_distributed, shard_model

    lr = 0.05 if optimizer == "rowwise_adagrad" else LR
    provider = make_provider(
        "feature_dimension", "mean", torch.device("meta"), layout=layout, unique_fraction=unique_fraction
    )
    cfg = TrainConfig(embedding_optimizer=optimizer, embedding_lr=lr, sharding="table_wise", device="cpu")
    dmp = shard_model(provider, cfg, init_distributed("cpu"))
    init_tables(dmp, SEED, STD, fill=fill)
    live = dmp.module
    start = full_tables(make_provider("feature_dimension", "mean", layout=layout))
    v = {f: t.detach()[:, 0::2].clone() for f, t in start.items()}
    s = {f: t.detach()[:, 1::2].clone() for f, t in start.items()}
    accumulator = {f: torch.zeros(n) for f, n in NUM.items()}
    keys = {provider.table_key(f"t_{f}"): f for f in FEATURES}
    for step in range(1, 6):
        offset = 0.1 * step
        live.threshold_offset.fill_(offset)
        bags = make_bags(12, seed=20 + step)
        r = torch.randn(12, F * K, generator=torch.Generator().manual_seed(40 + step))
        (dmp(to_kjt(bags, 0, 12)).values() * r).sum().backward()

        leaves = {f: (v[f].clone().requires_grad_(), s[f].clone().requires_grad_()) for f in FEATURES}
        ref = dense_reference(
            {f: p[0] for f, p in leaves.items()}, {f: p[1] for f, p in leaves.items()}, bags, offset, True
        )
        (ref * r).sum().backward()
        with torch.no_grad():
            for f, (vl, sl) in leaves.items():
                gv, gs = vl.grad, sl.grad
                if optimizer == "rowwise_adagrad":
                    accumulator[f] += torch.cat([gv, gs], dim=1).pow(2).mean(dim=1)
                    scale = lr / (accumulator[f].sqrt() + 1e-8)
                    v[f] -= scale.unsqueeze(1) * gv
                    s[f] -= scale.unsqueeze(1) * gs
                else:
                    v[f] -= lr * gv
                    s[f] -= lr * gs

        for key, value in table_state(dmp):
            f = keys[key]
            for piece, (r0, r1), _ in local_pieces(value):
                torch.testing.assert_close(piece[:, 0::2], v[f][r0:r1], rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(piece[:, 1::2], s[f][r0:r1], rtol=1e-4, atol=1e-6)
        nnz, total = count_nonzeros(live)
        margin = {f: v[f].abs() - torch.sigmoid(s[f] + offset) for f in FEATURES}
        kept = sum(int((m > 0).sum()) for m in margin.values())
        close = sum(int((m.abs() <= 1e-5).sum()) for m in margin.values())
        assert abs(nnz - kept) <= close and total == sum(NUM.values()) * K
        assert 0 < kept < total
