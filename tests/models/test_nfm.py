"""NFM: bi-interaction pooling against the pair sum; the arch against its hand formula."""

import torch
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.models import MLP, NFMArch, bi_interaction, fm_second_order

B, K = 5, 8


def test_bi_interaction_is_the_elementwise_pair_sum() -> None:
    v = torch.randn(B, 4, K, dtype=torch.float64)
    want = sum(v[:, i] * v[:, j] for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(bi_interaction(v), want)
    torch.testing.assert_close(bi_interaction(v).sum(-1), fm_second_order(v))


def test_arch_matches_hand_formula_with_dense() -> None:
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    arch = NFMArch(names, K, 2, hidden=(6,), init_bias=0.25).double()
    with torch.no_grad():
        arch.linear.field_weight.normal_()
    embs = [torch.randn(B, K, dtype=torch.float64) for _ in names]
    dense = torch.randn(B, 2, dtype=torch.float64)
    fields = embs + [dense[:, d : d + 1] * arch.fields.vectors[d] for d in range(2)]
    pooled = sum(fields[i] * fields[j] for i in range(5) for j in range(i + 1, 5))
    w, u = arch.linear.field_weight, arch.linear.dense_linear.weight[0]
    first = sum((embs[f] * w[f]).sum(-1) for f in range(3)) + dense @ u
    want = arch.bias + first + arch.mlp(pooled).squeeze(-1)
    torch.testing.assert_close(arch(dense, KeyedTensor.from_tensor_list(names, embs)), want)


def test_without_hidden_layers_it_is_a_weighted_fm() -> None:
    arch = NFMArch(["a", "b"], K, 0, hidden=())
    assert isinstance(arch.mlp, MLP) and arch.mlp.in_features == K and not list(arch.mlp.layers)
    embs = [torch.randn(B, K) for _ in range(2)]
    with torch.no_grad():
        arch.mlp.final.weight.fill_(1.0)  # h = 1: the FM pairwise term
    got = arch(torch.empty(B, 0), KeyedTensor.from_tensor_list(["a", "b"], embs))
    torch.testing.assert_close(got, (embs[0] * embs[1]).sum(-1))
