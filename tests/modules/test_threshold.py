"""PEP threshold provider against a per-id loop reference: output, table and threshold gradients,
unsharded and sharded over 2 gloo ranks (fused SGD), plus shard-wise counting and mask gathering."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recdim.config import TrainConfig
from recdim.modules.threshold import (
    FeatureDimensionThreshold,
    ThresholdEmbeddingProvider,
    make_thresholds,
    pool_rows,
    soft_threshold,
)
from recdim.search.pep import count_nonzeros, gather_masks
from recdim.train.init import init_tables, local_pieces, table_rows, table_state
from tests.dist_utils import run_ranks

K = 8
NUM = {"a": 11, "b": 7}  # "a": multi-valued bags (some empty), "b": single-valued
FEATURES = list(NUM)
SEED, STD, LR, OFFSET = 3, 0.1, 0.5, 0.25
GRANULARITIES = ["global", "dimension", "feature", "feature_dimension"]
Bags = Dict[str, List[List[int]]]


def fill(seed: int, key: str, rows: Tuple[int, int], cols: Tuple[int, int], full_dim: int, std: float) -> torch.Tensor:
    """Table init; in [N, 2K] tables the odd (threshold) columns are moved to about -3 +- 0.4."""
    out = table_rows(seed, key, rows, cols, full_dim, std)
    if full_dim == 2 * K:
        odd = torch.arange(cols[0], cols[1]) % 2 == 1
        out[:, odd] = -3.0 + 4.0 * out[:, odd]
    return out


def full_tables(prefix: str, width: int) -> Dict[str, torch.Tensor]:
    return {f: fill(SEED, f"{prefix}embeddings.t_{f}.weight", (0, n), (0, width), width, STD) for f, n in NUM.items()}


def dense_s(granularity: str) -> Optional[torch.Tensor]:
    return {
        "global": torch.tensor([-3.0]),
        "dimension": torch.linspace(-4.0, -2.0, K),
        "feature": torch.tensor([-3.5, -2.5]),
    }.get(granularity)


def make_bags(batch: int, seed: int) -> Bags:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (batch,), generator=g)
    lengths[1] = 0
    a = [torch.randint(0, NUM["a"], (int(n),), generator=g).tolist() for n in lengths]
    b = [[int(torch.randint(0, NUM["b"], (1,), generator=g))] for _ in range(batch)]
    return {"a": a, "b": b}


def to_kjt(bags: Bags, lo: int, hi: int, weights: Optional[Dict[str, List[List[float]]]] = None) -> KeyedJaggedTensor:
    values, lengths, w = [], [], []
    for f in FEATURES:
        for i in range(lo, hi):
            values += bags[f][i]
            lengths.append(len(bags[f][i]))
            if weights is not None:
                w += weights[f][i]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=FEATURES, values=torch.tensor(values, dtype=torch.long), lengths=torch.tensor(lengths, dtype=torch.int32),
        weights=torch.tensor(w) if weights is not None else None,
    )


def reference(tables: Dict[str, torch.Tensor], s: Optional[torch.Tensor], granularity: str, bags: Bags, mean: bool,
              weights: Optional[Dict[str, List[List[float]]]] = None) -> torch.Tensor:
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


def make_provider(granularity: str, pooling: str, device: Optional[torch.device] = None, weighted: bool = False) -> ThresholdEmbeddingProvider:
    thresholds = make_thresholds(granularity, FEATURES, K, -3.0)
    return ThresholdEmbeddingProvider(NUM, K, thresholds, pooling=pooling, is_weighted=weighted, device=device)


def set_dense_s(provider: ThresholdEmbeddingProvider, granularity: str) -> None:
    with torch.no_grad():
        s = dense_s(granularity)
        if s is not None:
            provider.thresholds.s.copy_(s)
        provider.threshold_offset.fill_(OFFSET)


def test_soft_threshold_and_pooling_basics() -> None:
    v = torch.tensor([[0.5, -0.5, 0.05, -0.05]])
    torch.testing.assert_close(soft_threshold(v, torch.tensor(0.1)), torch.tensor([[0.4, -0.4, 0.0, 0.0]]))
    rows = torch.arange(12.0).view(4, 3)
    torch.testing.assert_close(pool_rows(rows, torch.tensor([2, 0, 2]), mean=True), torch.tensor([[1.5, 2.5, 3.5], [0, 0, 0], [7.5, 8.5, 9.5]]))
    assert pool_rows(rows, torch.ones(4, dtype=torch.int32)) is rows  # single-valued fast path


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_matches_reference_unsharded(granularity: str, pooling: str) -> None:
    weighted = granularity == "feature" and pooling == "sum"
    provider = make_provider(granularity, pooling, weighted=weighted)
    width = K * provider.thresholds.columns_per_value
    init_tables(provider, SEED, STD, fill=fill)
    set_dense_s(provider, granularity)
    bags = make_bags(6, seed=1)
    g = torch.Generator().manual_seed(2)
    weights = {f: [[float(x) for x in torch.rand(len(bag), generator=g) + 0.5] for bag in bags[f]] for f in FEATURES} if weighted else None
    r = torch.randn(6, 2 * K, generator=g)

    out = provider(to_kjt(bags, 0, 6, weights)).values()
    (out * r).sum().backward()

    tables = {f: t.clone().requires_grad_() for f, t in full_tables("ec.", width).items()}
    s = dense_s(granularity)
    s = s.clone().requires_grad_() if s is not None else None
    ref = reference(tables, s, granularity, bags, pooling == "mean", weights)
    (ref * r).sum().backward()

    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for f in FEATURES:
        grad = provider.ec.embeddings[f"t_{f}"].weight.grad
        torch.testing.assert_close(grad, tables[f].grad, atol=1e-5, rtol=1e-5)
    if s is not None:
        torch.testing.assert_close(provider.thresholds.s.grad, s.grad, atol=1e-5, rtol=1e-5)
        assert s.grad.abs().sum() > 0
    # the case is not degenerate: some values are pruned, some survive
    assert 0.0 < float((ref == 0).float().mean()) < 0.9


def _dist_cases(rank: int, world: int) -> List[Dict[str, object]]:
    """Each granularity sharded table-wise with fused SGD: local output, threshold gradient, the table
    after one step, and the global non-zero count and gathered masks of the initial tables."""
    from recdim.train.distributed import init_distributed, shard_model

    ctx = init_distributed("cpu")
    bags = make_bags(8, seed=5)
    r = torch.randn(8, 2 * K, generator=torch.Generator().manual_seed(6))
    lo, hi = rank * 4, rank * 4 + 4
    results = []
    for granularity, pooling in [(g, "sum") for g in GRANULARITIES] + [("dimension", "mean")]:
        provider = make_provider(granularity, pooling, device=torch.device("meta"))
        cfg = TrainConfig(embedding_optimizer="sgd", embedding_lr=LR, sharding="table_wise", device="cpu")
        dmp = shard_model(provider, cfg, ctx)
        init_tables(dmp, SEED, STD, fill=fill)
        live = dmp.module
        set_dense_s(live, granularity)
        nnz = count_nonzeros(live)
        masks = gather_masks(live)
        out = dmp(to_kjt(bags, lo, hi)).values()
        ((out * r[lo:hi]).sum() / (hi - lo)).backward()
        pieces = [(key, rows, cols, t.detach().clone()) for key, v in table_state(dmp) for t, rows, cols in local_pieces(v)]
        s_grad = live.thresholds.s.grad.clone() if granularity != "feature_dimension" else None
        results.append(dict(granularity=granularity, pooling=pooling, out=out.detach(), s_grad=s_grad, pieces=pieces, nnz=nnz, masks=masks))
    return results


def test_matches_reference_sharded_two_ranks() -> None:
    ranks = run_ranks(2, _dist_cases)
    bags = make_bags(8, seed=5)
    r = torch.randn(8, 2 * K, generator=torch.Generator().manual_seed(6))
    for case in range(len(ranks[0])):
        granularity, pooling = ranks[0][case]["granularity"], ranks[0][case]["pooling"]
        width = 2 * K if granularity == "feature_dimension" else K
        tables = {f: t.clone().requires_grad_() for f, t in full_tables("ec.", width).items()}
        s = dense_s(granularity)
        s = s.clone().requires_grad_() if s is not None else None
        ref = reference(tables, s, granularity, bags, pooling == "mean")
        ((ref * r).sum() / 8).backward()
        for rank, res in enumerate(ranks):
            res = res[case]
            torch.testing.assert_close(res["out"], ref[rank * 4 : rank * 4 + 4].detach(), atol=1e-5, rtol=1e-5)
            if s is not None:
                torch.testing.assert_close(res["s_grad"], s.grad, atol=1e-5, rtol=1e-5)
            for key, (r0, r1), (c0, c1), piece in res["pieces"]:
                f = key.split(".t_")[1].split(".")[0]
                stepped = (tables[f] - LR * tables[f].grad).detach()[r0:r1, c0:c1]
                torch.testing.assert_close(piece, stepped, atol=1e-5, rtol=1e-5)
        # shard-wise counting and mask gathering, against the whole initial tables
        with torch.no_grad():
            masks = {}
            for fi, f in enumerate(FEATURES):
                t = tables[f]
                v, thr = (t[:, 0::2], t[:, 1::2]) if granularity == "feature_dimension" else (t, s[fi] if granularity == "feature" else s)
                masks[f"t_{f}"] = v.abs() > torch.sigmoid(thr + OFFSET)
        total = sum(n * K for n in NUM.values())
        expected = sum(int(m.sum()) for m in masks.values())
        assert ranks[0][case]["nnz"] == ranks[1][case]["nnz"] == (expected, total)
        assert 0 < expected < total
        assert ranks[1][case]["masks"] is None
        for name, m in masks.items():
            assert torch.equal(ranks[0][case]["masks"][name], m), (granularity, name)


def test_feature_dimension_table_layout() -> None:
    provider = make_provider("feature_dimension", "sum")
    assert isinstance(provider.thresholds, FeatureDimensionThreshold)
    assert [t.embedding_dim for t in provider.tables] == [2 * K, 2 * K]
    assert provider.embedding_params() == sum(NUM.values()) * K
    assert provider.embedding_bytes() == 4 * sum(NUM.values()) * 2 * K
    assert provider.threshold_parameters() == [] and provider.arch_parameters() == []
    with pytest.raises(ValueError):
        provider.thresholds.split_piece(0, torch.zeros(3, 6), (1, 7))
