"""AutoInt: the interacting layer against per-field, per-head loops; the arch's output layer; its config."""

from typing import List

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.config import ModelConfig
from recdim.models import AutoIntArch, InteractingLayer, build_arch

B, K = 5, 8


def reference_layer(layer: InteractingLayer, x: torch.Tensor) -> torch.Tensor:
    """Plain loops over fields m, k and heads h: softmax_k <Q_h e_m, K_h e_k>, sum_k alpha V_h e_k, residual."""
    H, d = layer.num_heads, layer.head_dim
    q, k, v, r = (m.weight for m in (layer.query, layer.key, layer.value, layer.residual))
    n = x.size(1)
    out = torch.zeros(x.size(0), n, H * d, dtype=x.dtype)
    for b in range(x.size(0)):
        for m in range(n):
            heads: List[torch.Tensor] = []
            for h in range(H):
                rows = slice(h * d, (h + 1) * d)
                qm = q[rows] @ x[b, m]
                scores = torch.stack([qm @ (k[rows] @ x[b, j]) for j in range(n)])
                alpha = torch.softmax(scores, dim=0)
                heads.append(sum(alpha[j] * (v[rows] @ x[b, j]) for j in range(n)))
            out[b, m] = torch.relu(torch.cat(heads) + r @ x[b, m])
    return out


def test_interacting_layer_matches_loops() -> None:
    torch.manual_seed(0)
    layer = InteractingLayer(K, head_dim=3, num_heads=2).double()
    x = torch.randn(B, 4, K, dtype=torch.float64)
    got = layer(x)
    assert got.shape == (B, 4, 6) and layer.out_dim == 6
    torch.testing.assert_close(got, reference_layer(layer, x))


def test_arch_reads_fields_through_layers_and_output() -> None:
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    arch = AutoIntArch(names, K, 2, num_layers=2, num_heads=2, head_dim=4, init_bias=0.5).double()
    embs = [torch.randn(B, K, dtype=torch.float64) for _ in names]
    dense = torch.randn(B, 2, dtype=torch.float64)
    fields = torch.stack(embs + [dense[:, d : d + 1] * arch.fields.vectors[d] for d in range(2)], dim=1)
    x = fields
    for layer in arch.layers:
        x = reference_layer(layer, x)
    want = x.flatten(1) @ arch.output.weight[0] + arch.output.bias
    assert arch.output.in_features == 5 * 8
    torch.testing.assert_close(arch(dense, KeyedTensor.from_tensor_list(names, embs)), want)


def test_single_field_attends_to_itself() -> None:
    arch = AutoIntArch(["only"], K, 0, num_layers=1, num_heads=1, head_dim=4)
    kt = KeyedTensor.from_tensor_list(["only"], [torch.randn(B, K)])
    assert arch(torch.empty(B, 0), kt).shape == (B,)


def test_config_sets_layers_heads_and_width() -> None:
    cfg = ModelConfig(arch="autoint", embedding_dim=K, attention_layers=1, attention_heads=3, attention_dim=5)
    arch = build_arch(cfg, ["a", "b"], 0)
    assert isinstance(arch, AutoIntArch) and len(arch.layers) == 1
    assert (arch.layers[0].num_heads, arch.layers[0].head_dim) == (3, 5)
    for bad in ("attention_layers", "attention_heads", "attention_dim"):
        with pytest.raises(ValueError, match=bad):
            ModelConfig(arch="autoint", **{bad: 0})
