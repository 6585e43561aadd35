"""AutoDim candidate-dimension provider against a plain reference (per-id pooling loops, per-candidate
Linear / BatchNorm / zero padding, Gumbel-softmax with fixed noise): output and gradients w.r.t. tables,
transforms and architecture weights, unsharded and sharded over 2 gloo ranks (fused SGD).

BatchNorm in training mode normalises with the statistics of the batch it sees, which on 2 ranks is each
rank's half; the sharded Linear+BatchNorm case therefore runs BatchNorm in eval mode (with non-trivial
running statistics), and the unsharded cases check training mode.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recdim.config import TrainConfig
from recdim.modules.candidate_dims import (
    CandidateDimsProvider,
    CandidateTransform,
    EqualMixing,
    GumbelSoftmaxMixing,
    LinearBatchNorm,
    SeparateTables,
    SharedPrefix,
    ZeroPad,
    clip_candidates,
)
from recdim.modules.table_init import init_tables, local_pieces, table_rows, table_state
from tests.dist_utils import run_ranks

K = 16
NUM = {"a": 11, "b": 7, "c": 9}  # "a", "c": multi-valued bags (some empty), "b": single-valued
FEATURES = list(NUM)
F = len(FEATURES)
CANDIDATES = {"a": (4, 8, 16), "b": (4, 12), "c": (4, 8, 16)}  # groups {a, c} and {b}: batched + reordered
SEED, STD, LR, TAU = 3, 0.1, 0.5, 0.7
NOISE = [torch.tensor([0.3, -1.2, 0.8]), torch.tensor([-0.4, 1.1]), torch.tensor([0.9, 0.1, -0.7])]
ALPHA = [torch.tensor([0.2, -0.5, 0.4]), torch.tensor([0.6, -0.1]), torch.tensor([-0.3, 0.5, 0.1])]
Bags = Dict[str, List[List[int]]]


def fixed_noise(features: Sequence[int], alpha: torch.Tensor) -> torch.Tensor:
    return torch.stack([NOISE[f][: alpha.size(1)] for f in features])


def make_bags(batch: int, seed: int) -> Bags:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (2, batch), generator=g)
    lengths[0, 1] = lengths[1, 2] = 0
    return {
        "a": [torch.randint(0, NUM["a"], (int(n),), generator=g).tolist() for n in lengths[0]],
        "b": [[int(torch.randint(0, NUM["b"], (1,), generator=g))] for _ in range(batch)],
        "c": [torch.randint(0, NUM["c"], (int(n),), generator=g).tolist() for n in lengths[1]],
    }


def to_kjt(bags: Bags, lo: int, hi: int) -> KeyedJaggedTensor:
    values = [i for f in FEATURES for bag in bags[f][lo:hi] for i in bag]
    lengths = [len(bag) for f in FEATURES for bag in bags[f][lo:hi]]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=FEATURES, values=torch.tensor(values, dtype=torch.long), lengths=torch.tensor(lengths, dtype=torch.int32)
    )


def make_provider(
    storage: str, transform: str, pooling: str = "sum", device: Optional[torch.device] = None
) -> CandidateDimsProvider:
    provider = CandidateDimsProvider(
        NUM,
        K,
        CANDIDATES,
        SharedPrefix() if storage == "shared" else SeparateTables(),
        LinearBatchNorm if transform == "linear_bn" else ZeroPad,
        pooling,
        device=device,
    )
    g = torch.Generator().manual_seed(4)  # the same transforms whether tables are on meta or not
    with torch.no_grad():
        for a, v in zip(provider.alpha, ALPHA):
            a.copy_(v)
        for tr in provider.transforms:
            if isinstance(tr, LinearBatchNorm):
                tr.weight.copy_(torch.randn(tr.weight.shape, generator=g) * 0.3 * tr.mask)
                tr.bias.copy_(torch.randn(tr.bias.shape, generator=g) * 0.1)
    provider.mixing = GumbelSoftmaxMixing(TAU, fixed_noise)
    return provider


def set_running_stats(provider: CandidateDimsProvider) -> None:
    """BatchNorm in eval mode with non-trivial running statistics."""
    g = torch.Generator().manual_seed(9)
    for m in provider.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.eval()
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def locate(provider: CandidateDimsProvider, feature: str) -> Tuple[int, int]:
    """(index of the transform holding ``feature``, the feature's position in that group)."""
    i = FEATURES.index(feature)
    for gi, (_, members) in enumerate(provider.groups):
        if i in members:
            return gi, members.index(i)
    raise KeyError(feature)


class Reference:
    """The provider's math written out: loops over ids, one Linear (or pad) per feature and candidate."""

    def __init__(self, provider: CandidateDimsProvider, storage: str, transform: str, prefix: str) -> None:
        self.storage, self.transform = storage, transform
        self.tables: Dict[str, torch.Tensor] = {}
        for t in provider.tables:
            key = f"{prefix}embedding_bags.{t.name}.weight"
            self.tables[t.name] = table_rows(
                SEED, key, (0, t.num_embeddings), (0, t.embedding_dim), t.embedding_dim, STD
            ).requires_grad_()
        self.linears: Dict[str, List[Tuple[torch.Tensor, torch.Tensor]]] = {}
        self.bn: Dict[str, Tuple[nn.BatchNorm1d, int]] = {}  # feature -> (BatchNorm, first channel)
        for f in FEATURES:
            gi, pos = locate(provider, f)
            tr = provider.transforms[gi]
            if transform == "linear_bn":
                self.linears[f] = [
                    tuple(x.detach().clone().requires_grad_() for x in tr.candidate_linear(pos, j))  # type: ignore[misc]
                    for j in range(len(CANDIDATES[f]))
                ]
                self.bn[f] = (tr.bn, pos * len(CANDIDATES[f]) * K)
        self.alpha = [a.clone().requires_grad_() for a in ALPHA]

    def pooled(self, table: torch.Tensor, bags: List[List[int]], mean: bool) -> torch.Tensor:
        rows = []
        for bag in bags:
            acc = torch.zeros(table.size(1))
            for i in bag:
                acc = acc + table[i]
            rows.append(acc / len(bag) if mean and bag else acc)
        return torch.stack(rows)

    def __call__(self, bags: Bags, mean: bool, bn_train: bool, noise: bool = True) -> torch.Tensor:
        outs = []
        for fi, f in enumerate(FEATURES):
            dims = CANDIDATES[f]
            if self.storage == "shared":
                e = self.pooled(self.tables[f"t_{f}"], bags[f], mean)
                xs = [e[:, :d] for d in dims]
            else:
                xs = [self.pooled(self.tables[f"t_{f}_d{d}"], bags[f], mean) for d in dims]
            ys = []
            for j, x in enumerate(xs):
                if self.transform == "zero_pad":
                    ys.append(torch.cat([x, torch.zeros(x.size(0), K - x.size(1))], dim=1))
                    continue
                w, b = self.linears[f][j]
                y = x @ w.t() + b
                bn, c0 = self.bn[f]
                if bn_train:
                    mu, var = y.mean(0), y.var(0, unbiased=False)
                else:
                    mu, var = (
                        bn.running_mean[c0 + j * K : c0 + (j + 1) * K],
                        bn.running_var[c0 + j * K : c0 + (j + 1) * K],
                    )
                ys.append((y - mu) / torch.sqrt(var + bn.eps))
            logits = self.alpha[fi] + (NOISE[fi][: len(dims)] if noise else 0.0)
            p = torch.softmax(logits / TAU, dim=0)
            outs.append(sum(p[j] * ys[j] for j in range(len(dims))))
        return torch.cat(outs, dim=1)


def bn_grad_tol(expected: torch.Tensor, bn_train: bool) -> Dict[str, float]:
    """Tolerance for a float32 gradient that passes through the BatchNorm of every candidate.

    Training-mode BatchNorm's backward subtracts the batch mean of the incoming gradient and its projection
    on the normalised output, so an entry can be a small difference of large terms: two float32
    computations that round differently agree to ~1e-5 of the gradient's scale, not of every entry. (On
    the 6-row batch here the float32 reference itself is up to ~2x the per-entry 1e-5 + 1e-4 |x| away from
    its float64 value; the provider normalises through batch moments of the block, another rounding.) So
    rtol 1e-4 and atol 1e-5 times the largest entry there, atol = rtol = 1e-5 under eval-mode BatchNorm.
    """
    if not bn_train:
        return dict(atol=1e-5, rtol=1e-5)
    return dict(atol=1e-5 * max(1.0, float(expected.abs().max())), rtol=1e-4)


def check_dense_grads(
    provider: CandidateDimsProvider,
    ref: Reference,
    transform: str,
    alpha_grads: Sequence[torch.Tensor],
    transform_grads: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    bn_train: bool,
) -> None:
    """``transform_grads``: (weight grad, bias grad) of each transform (group) of the provider."""
    # Under training-mode BatchNorm: rtol 1e-4 (see bn_grad_tol), 1e-5 everywhere else. The Linear bias
    # gradient is exactly 0 in exact arithmetic under it, so it is checked for being small, and compared
    # under eval-mode BatchNorm (the sharded test).
    tol = dict(atol=1e-5, rtol=1e-4 if bn_train else 1e-5)
    for i, f in enumerate(FEATURES):
        torch.testing.assert_close(alpha_grads[i], ref.alpha[i].grad, **tol)
        if transform != "linear_bn":
            continue
        gi, pos = locate(provider, f)
        wg, bg = transform_grads[gi]
        slices = provider.storage.slices(provider.dims[f])
        expected = torch.zeros_like(wg[pos])
        for j, (a, w) in enumerate(slices):
            expected[j * K : (j + 1) * K, a : a + w] = ref.linears[f][j][0].grad
        torch.testing.assert_close(wg[pos], expected, **bn_grad_tol(expected, bn_train))
        ref_bias = torch.cat([b.grad for _, b in ref.linears[f]])
        if bn_train:
            assert bg[pos].abs().max() < 1e-3
        else:
            torch.testing.assert_close(bg[pos], ref_bias, atol=1e-5, rtol=1e-5)


def test_candidate_clipping() -> None:
    assert clip_candidates((4, 8, 16, 24, 32), 16) == (4, 8, 16)
    assert clip_candidates((32, 8, 8), 32) == (8, 32)
    with pytest.raises(ValueError):
        clip_candidates((6,), 16)
    with pytest.raises(ValueError):
        clip_candidates((32,), 16)
    p = CandidateDimsProvider(NUM, 16)
    assert p.dims == {f: (4, 8, 16) for f in FEATURES} and len(p.groups) == 1
    assert [t.embedding_dim for t in p.tables] == [16, 16, 16]
    names = [t.name for t in CandidateDimsProvider({"a": 5, "b": 5}, 8, storage=SeparateTables()).tables]
    assert names == ["t_a_d4", "t_a_d8", "t_b_d4", "t_b_d8"]
    assert make_provider("shared", "linear_bn").groups == [((4, 8, 16), [0, 2]), ((4, 12), [1])]


@pytest.mark.parametrize(
    "storage,transform,pooling",
    [
        ("shared", "linear_bn", "sum"),
        ("shared", "zero_pad", "mean"),
        ("separate", "linear_bn", "mean"),
        ("separate", "zero_pad", "sum"),
    ],
)
def test_matches_reference_unsharded(storage: str, transform: str, pooling: str) -> None:
    provider = make_provider(storage, transform, pooling)
    init_tables(provider, SEED, STD)
    ref = Reference(provider, storage, transform, "ebc.")
    bags = make_bags(6, seed=1)
    r = torch.randn(6, F * K, generator=torch.Generator().manual_seed(2))

    out = provider(to_kjt(bags, 0, 6)).values()
    (out * r).sum().backward()
    expected = ref(bags, pooling == "mean", bn_train=True)
    (expected * r).sum().backward()

    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for t in provider.tables:
        grad = ref.tables[t.name].grad
        tol = bn_grad_tol(grad, True) if transform == "linear_bn" else dict(atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(provider.ebc.embedding_bags[t.name].weight.grad, grad, **tol)
    tr_grads = [(tr.weight.grad, tr.bias.grad) for tr in provider.transforms] if transform == "linear_bn" else []
    check_dense_grads(provider, ref, transform, [a.grad for a in provider.alpha], tr_grads, bn_train=True)

    # eval: no noise; BatchNorm on running statistics
    provider.eval()
    set_running_stats(provider)
    with torch.no_grad():
        torch.testing.assert_close(
            provider(to_kjt(bags, 0, 6)).values(),
            ref(bags, pooling == "mean", bn_train=False, noise=False),
            atol=1e-5,
            rtol=1e-5,
        )


def test_equal_mixing_gives_zero_alpha_gradient() -> None:
    provider = make_provider("shared", "zero_pad")
    init_tables(provider, SEED, STD)
    provider.mixing = EqualMixing()
    bags = make_bags(6, seed=1)
    out = provider(to_kjt(bags, 0, 6)).values()
    out.sum().backward()
    for a in provider.alpha:
        assert a.grad is not None and torch.equal(a.grad, torch.zeros_like(a))
    e = provider.ebc(to_kjt(bags, 0, 6)).to_dict()["a"]
    padded = torch.stack([torch.cat([e[:, :d], torch.zeros(6, K - d)], 1) for d in CANDIDATES["a"]]).mean(0)
    torch.testing.assert_close(out[:, :K], padded, atol=1e-6, rtol=1e-6)


def test_derive_dims_and_sizes() -> None:
    provider = make_provider("separate", "zero_pad")
    assert provider.derive_dims() == {"a": 16, "b": 4, "c": 8}  # argmax of ALPHA
    assert provider.embedding_params() == 11 * (4 + 8 + 16) + 7 * (4 + 12) + 9 * (4 + 8 + 16)
    assert [p.shape for p in provider.arch_parameters()] == [torch.Size([3]), torch.Size([2]), torch.Size([3])]
    w = provider.candidate_weights()
    torch.testing.assert_close(w["a"], torch.softmax(ALPHA[0], 0))


def per_candidate_mix(transform: CandidateTransform, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The plain formulation: every candidate through its transform ([B, G, J, K]), then the weighted sum."""
    return (transform(x) * p.unsqueeze(-1)).sum(dim=2)


@pytest.mark.parametrize("transform,momentum", [("linear_bn", 0.1), ("linear_bn", None), ("zero_pad", None)])
@pytest.mark.parametrize("storage", ["shared", "separate"])
def test_fast_mixture_matches_per_candidate(storage: str, transform: str, momentum: Optional[float]) -> None:
    """``transform.mix`` against every candidate transformed then summed, float32: outputs, gradients of
    the blocks (what reaches the tables), transform weights and biases and alpha, and BatchNorm's running
    statistics (with a momentum or the cumulative average) over 3 training batches, then in eval mode."""
    dims, g, batch = (4, 8, 16), 3, 64
    slices = (SharedPrefix() if storage == "shared" else SeparateTables()).slices(dims)
    width = max(a + w for a, w in slices)
    build = LinearBatchNorm if transform == "linear_bn" else ZeroPad
    torch.manual_seed(0)
    fast = build(slices, K, g)
    plain = copy.deepcopy(fast)
    if isinstance(fast, LinearBatchNorm):
        assert isinstance(plain, LinearBatchNorm)
        plain.bn.momentum = fast.bn.momentum = momentum  # None: the cumulative average over batches
    gen = torch.Generator().manual_seed(1)
    alpha = torch.randn(g, len(dims), generator=gen)
    tol = dict(atol=1e-5, rtol=1e-5)
    grad_tol = dict(atol=1e-5, rtol=1e-4)  # BatchNorm's backward cancels (see bn_grad_tol)
    for step, training in enumerate([True, True, True, False]):
        fast.train(training)
        plain.train(training)
        x = (torch.randn(batch, g, width, generator=gen) * 0.3 + 0.2).requires_grad_()
        r = torch.randn(batch, g, K, generator=gen) / batch
        results = []
        for t, mix in ((fast, type(fast).mix), (plain, per_candidate_mix)):
            t.zero_grad()
            xi, ai = x.detach().clone().requires_grad_(), alpha.clone().requires_grad_()
            out = mix(t, xi, torch.softmax(ai, dim=-1))
            (out * r).sum().backward()
            params = [] if isinstance(t, ZeroPad) else [t.weight.grad, t.bias.grad]
            results.append((out.detach(), xi.grad, ai.grad, params))
        (out_f, xg_f, ag_f, pg_f), (out_p, xg_p, ag_p, pg_p) = results
        torch.testing.assert_close(out_f, out_p, **tol)
        torch.testing.assert_close(xg_f, xg_p, **grad_tol)
        torch.testing.assert_close(ag_f, ag_p, **grad_tol)
        for a, b in zip(pg_f, pg_p):
            torch.testing.assert_close(a, b, **grad_tol)
        if isinstance(fast, LinearBatchNorm):
            assert isinstance(plain, LinearBatchNorm)
            torch.testing.assert_close(fast.bn.running_mean, plain.bn.running_mean, **tol)
            torch.testing.assert_close(fast.bn.running_var, plain.bn.running_var, **tol)
            assert int(fast.bn.num_batches_tracked) == int(plain.bn.num_batches_tracked) == min(step + 1, 3)


def test_fast_mixture_needs_two_rows_under_batch_statistics() -> None:
    t = LinearBatchNorm([(0, 4), (0, 8)], K, 2)
    with pytest.raises(ValueError):
        t.mix(torch.randn(1, 2, 8), torch.full((2, 2), 0.5))
    t.eval()
    assert t.mix(torch.randn(1, 2, 8), torch.full((2, 2), 0.5)).shape == (1, 2, K)


def test_block_gather_is_a_view_when_adjacent() -> None:
    provider = CandidateDimsProvider(NUM, K, storage=SeparateTables())
    kt = provider.ebc(to_kjt(make_bags(4, seed=3), 0, 4))
    block = provider.storage.gather(kt, FEATURES, provider.dims["a"])
    assert block.shape == (4, F, 4 + 8 + 16) and block.data_ptr() == kt.values().data_ptr()
    reordered = provider.storage.gather(kt, ["c", "a"], provider.dims["a"])
    as_dict = kt.to_dict()
    expected = [torch.cat([as_dict[f"{f}@t_{f}_d{d}"] for d in (4, 8, 16)], 1) for f in ("c", "a")]
    torch.testing.assert_close(reordered, torch.stack(expected, 1), atol=0, rtol=0)


CASES = [("shared", "linear_bn", "sum"), ("separate", "zero_pad", "mean"), ("separate", "linear_bn", "sum")]


def _dist_cases(rank: int, world: int) -> List[Dict[str, object]]:
    from recdim.train.distributed import init_distributed, shard_model

    ctx = init_distributed("cpu")
    bags = make_bags(8, seed=5)
    r = torch.randn(8, F * K, generator=torch.Generator().manual_seed(6))
    lo, hi = rank * 4, rank * 4 + 4
    results = []
    for storage, transform, pooling in CASES:
        provider = make_provider(storage, transform, pooling, device=torch.device("meta"))
        set_running_stats(provider)  # BatchNorm in eval mode, the rest in training mode
        cfg = TrainConfig(embedding_optimizer="sgd", embedding_lr=LR, sharding="table_wise", device="cpu")
        dmp = shard_model(provider, cfg, ctx)
        init_tables(dmp, SEED, STD)
        live = dmp.module
        out = dmp(to_kjt(bags, lo, hi)).values()
        ((out * r[lo:hi]).sum() / (hi - lo)).backward()
        results.append(
            dict(
                out=out.detach(),
                pieces=[
                    (key, rows, cols, t.detach().clone())
                    for key, v in table_state(dmp)
                    for t, rows, cols in local_pieces(v)
                ],
                alpha=[a.grad.clone() for a in live.alpha],
                transform=[(tr.weight.grad.clone(), tr.bias.grad.clone()) for tr in live.transforms]
                if transform == "linear_bn"
                else [],
            )
        )
    return results


@pytest.mark.multiprocess
def test_matches_reference_sharded_two_ranks() -> None:
    ranks = run_ranks(2, _dist_cases)
    bags = make_bags(8, seed=5)
    r = torch.randn(8, F * K, generator=torch.Generator().manual_seed(6))
    for c, (storage, transform, pooling) in enumerate(CASES):
        provider = make_provider(storage, transform, pooling)
        set_running_stats(provider)
        ref = Reference(provider, storage, transform, "ebc.")
        expected = ref(bags, pooling == "mean", bn_train=False)
        ((expected * r).sum() / 8).backward()
        for rank, res in enumerate(ranks):
            res = res[c]
            torch.testing.assert_close(res["out"], expected[rank * 4 : rank * 4 + 4].detach(), atol=1e-5, rtol=1e-5)
            check_dense_grads(provider, ref, transform, res["alpha"], res["transform"], bn_train=False)
            for key, (r0, r1), (c0, c1), piece in res["pieces"]:
                name = key.split(".")[-2]
                stepped = (ref.tables[name] - LR * ref.tables[name].grad).detach()[r0:r1, c0:c1]
                torch.testing.assert_close(piece, stepped, atol=1e-5, rtol=1e-5)
