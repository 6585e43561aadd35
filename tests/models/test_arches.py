"""Interaction arches: shapes, gradients, and the interaction terms against plain loops."""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.config import ARCHES, ModelConfig
from recdim.models import (
    MLP,
    AutoIntArch,
    DeepFMArch,
    DLRMArch,
    DotInteraction,
    FMArch,
    InteractionArch,
    LRArch,
    MFArch,
    MLPArch,
    NeuMFArch,
    NFMArch,
    PNNArch,
    WideDeepArch,
    build_arch,
    fm_second_order,
)

B, K = 6, 8


def make_inputs(
    names: List[str], num_dense: int, seed: int = 0
) -> Tuple[torch.Tensor, List[torch.Tensor], KeyedTensor]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(B, num_dense, generator=g)
    embs = [torch.randn(B, K, generator=g).requires_grad_() for _ in names]
    return dense, embs, KeyedTensor.from_tensor_list(names, embs)


def randomize(arch: torch.nn.Module, seed: int = 1) -> None:
    """Non-zero values everywhere (some parameters start at zero), so no path is silently dead."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in arch.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


ARCH_CASES: Dict[str, Callable[[List[str], int], InteractionArch]] = {
    "dlrm": lambda n, d: DLRMArch(n, K, d, bottom_mlp=(16,), top_mlp=(16, 8)),
    "deepfm": lambda n, d: DeepFMArch(n, K, d, hidden=(16, 8)),
    "fm": lambda n, d: FMArch(n, K, d),
    "wide_deep": lambda n, d: WideDeepArch(n, K, d, hidden=(16, 8)),
    "mf": lambda n, d: MFArch(n, K, d),
    "mlp": lambda n, d: MLPArch(n, K, d, hidden=(16, 8)),
    "neumf": lambda n, d: NeuMFArch(n, K, d, hidden=(16, 8)),
    "autoint": lambda n, d: AutoIntArch(n, K, d, num_layers=2, num_heads=2, head_dim=4),
    "nfm": lambda n, d: NFMArch(n, K, d, hidden=(16,)),
    "pnn": lambda n, d: PNNArch(n, K, d, hidden=(16, 8)),
    "pnn_outer": lambda n, d: PNNArch(n, K, d, hidden=(16,), product="outer"),
    "pnn_both": lambda n, d: PNNArch(n, K, d, hidden=(16,), product="both"),
    "lr": lambda n, d: LRArch(n, K, d),
}


def feature_names(arch: str) -> List[str]:
    return ["user", "item"] if arch == "mf" else ["user", "item", "genre"]


@pytest.mark.parametrize("num_dense", [0, 3])
@pytest.mark.parametrize("arch_name", sorted(ARCH_CASES))
def test_shape_and_gradients(arch_name: str, num_dense: int) -> None:
    torch.manual_seed(0)
    names = feature_names(arch_name)
    arch = ARCH_CASES[arch_name](names, num_dense)
    randomize(arch)
    dense, embs, kt = make_inputs(names, num_dense)
    out = arch(dense, kt)
    assert out.shape == (B,)
    assert torch.isfinite(out).all()
    out.pow(2).sum().backward()
    for pname, p in arch.named_parameters():
        assert p.grad is not None, f"{arch_name}: no gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{arch_name}: zero gradient for {pname}"
    for name, e in zip(names, embs):
        assert e.grad is not None and e.grad.abs().sum() > 0, f"{arch_name}: no gradient to {name}"


@pytest.mark.parametrize("arch_name", sorted(ARCH_CASES))
def test_key_order_does_not_matter(arch_name: str) -> None:
    names = feature_names(arch_name)
    arch = ARCH_CASES[arch_name](names, 2).eval()
    randomize(arch)
    dense, embs, kt = make_inputs(names, 2)
    shuffled = KeyedTensor.from_tensor_list(names[::-1], embs[::-1])
    torch.testing.assert_close(arch(dense, kt), arch(dense, shuffled))


def test_every_arch_has_a_case() -> None:
    assert set(ARCHES) <= set(ARCH_CASES)


@pytest.mark.parametrize("arch_name", sorted(ARCHES))
def test_init_bias(arch_name: str) -> None:
    names = feature_names(arch_name)
    torch.manual_seed(0)
    a = build_arch(ModelConfig(arch=arch_name, embedding_dim=K), names, 0, init_bias=0.0)
    torch.manual_seed(0)
    b = build_arch(ModelConfig(arch=arch_name, embedding_dim=K), names, 0, init_bias=3.5)
    dense, _, kt = make_inputs(names, 0)
    with torch.no_grad():
        torch.testing.assert_close(b(dense, kt) - a(dense, kt), torch.full((B,), 3.5))
    assert isinstance(a, InteractionArch)


def test_dot_interaction_matches_pair_loop() -> None:
    v = torch.randn(B, 5, K)
    got = DotInteraction(5)(v)
    want = torch.stack([(v[:, i] * v[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5)], 1)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("num_dense", [0, 4])
def test_dlrm_matches_explicit_loop(num_dense: int) -> None:
    names = ["a", "b", "c"]
    arch = DLRMArch(names, K, num_dense, bottom_mlp=(16,), top_mlp=(16,))
    dense, embs, kt = make_inputs(names, num_dense)
    vectors = list(embs)
    pieces: List[torch.Tensor] = []
    if num_dense:
        x = arch.bottom(dense)
        assert x.shape == (B, K)
        vectors = [x] + vectors
        pieces.append(x)
    pairs = [
        (vectors[i] * vectors[j]).sum(-1, keepdim=True) for i in range(len(vectors)) for j in range(i + 1, len(vectors))
    ]
    want = arch.top(torch.cat(pieces + pairs, dim=1)).squeeze(-1)
    torch.testing.assert_close(arch(dense, kt), want)


def test_dlrm_without_dense_has_no_bottom_parameters() -> None:
    arch = DLRMArch(["a", "b"], K, 0, bottom_mlp=(16,), top_mlp=(4,))
    assert not list(arch.bottom.parameters())
    assert arch.top.in_features == 1
    with pytest.raises(ValueError, match="two vectors"):
        DLRMArch(["a"], K, 0)


def test_fm_second_order_equals_pair_sum() -> None:
    v = torch.randn(B, 4, K, dtype=torch.float64)
    want = sum((v[:, i] * v[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(fm_second_order(v), want)


def test_fm_arch_matches_hand_formula_with_dense() -> None:
    names = ["a", "b", "c"]
    arch = FMArch(names, K, 2, init_bias=0.25)
    randomize(arch)
    dense, embs, kt = make_inputs(names, 2)
    w = arch.fm.first_order.field_weight
    u = arch.fm.first_order.dense_linear.weight[0]
    vd = arch.fm.second_order.dense_vectors
    fields = list(embs) + [dense[:, d : d + 1] * vd[d] for d in range(2)]
    second = sum((fields[i] * fields[j]).sum(-1) for i in range(len(fields)) for j in range(i + 1, len(fields)))
    first = sum((embs[f] * w[f]).sum(-1) for f in range(3)) + dense @ u
    torch.testing.assert_close(arch(dense, kt), arch.bias + first + second)


def test_mf_matches_hand_formula() -> None:
    arch = MFArch(["user", "item"], K, 0, init_bias=3.5)
    assert float(arch.bias) == 3.5
    randomize(arch)
    dense, (eu, ei), kt = make_inputs(["user", "item"], 0)
    w = arch.linear.field_weight
    want = arch.bias + (w[0] * eu).sum(-1) + (w[1] * ei).sum(-1) + (eu * ei).sum(-1)
    torch.testing.assert_close(arch(dense, kt), want)


def test_mf_rejects_other_feature_counts() -> None:
    with pytest.raises(ValueError, match="exactly two"):
        MFArch(["user", "item", "genre"], K, 0)


def test_neumf_fuses_gmf_and_tower() -> None:
    names = ["user", "item", "genre"]
    arch = NeuMFArch(names, K, 1, hidden=(16, 8))
    dense, embs, kt = make_inputs(names, 1)
    tower = arch.tower(torch.cat(embs + [dense], dim=1))
    want = arch.fuse(torch.cat([embs[0] * embs[1], tower], dim=1)).squeeze(-1)
    torch.testing.assert_close(arch(dense, kt), want)


def test_mlp_block() -> None:
    assert MLP(5, [7, 3]).out_features == 3
    assert MLP(5, [], out_features=2).out_features == 2
    x = torch.randn(4, 5)
    torch.testing.assert_close(MLP(5, [])(x), x)
    layers = [type(m).__name__ for m in MLP(5, [7], out_features=1, dropout=0.5).modules()]
    assert layers.count("Dropout") == 1 and layers.count("Linear") == 2


def test_factory_builds_all_arches() -> None:
    expected = {
        "dlrm": DLRMArch,
        "deepfm": DeepFMArch,
        "fm": FMArch,
        "wide_deep": WideDeepArch,
        "mf": MFArch,
        "mlp": MLPArch,
        "neumf": NeuMFArch,
        "autoint": AutoIntArch,
        "nfm": NFMArch,
        "pnn": PNNArch,
        "lr": LRArch,
    }
    assert set(expected) == set(ARCHES)
    for name in ARCHES:
        names = feature_names(name)
        cfg = ModelConfig(arch=name, embedding_dim=K, mlp=(16,), bottom_mlp=(8,), dropout=0.1)
        arch = build_arch(cfg, names, 3)
        assert type(arch) is expected[name]
        assert arch.feature_names == names and arch.embedding_dim == K and arch.num_dense == 3
        dense, _, kt = make_inputs(names, 3)
        assert arch(dense, kt).shape == (B,)


@pytest.mark.parametrize("arch_name", ["mf", "neumf"])
def test_factory_rejects_single_feature_for_user_item_arches(arch_name: str) -> None:
    with pytest.raises(ValueError, match="two features"):
        build_arch(ModelConfig(arch=arch_name, embedding_dim=K), ["user"], 0)
