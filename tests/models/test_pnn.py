"""PNN: inner, outer and both product layers against plain loops; config choice; bad product."""

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.config import ConfigError, ModelConfig, load_config
from recdim.models import OuterProductSum, PNNArch, build_arch

B, K = 5, 4
NAMES = ["a", "b", "c"]


def fields_of(arch: PNNArch, dense: torch.Tensor, embs):
    return embs + [dense[:, d : d + 1] * arch.fields.vectors[d] for d in range(dense.size(1))]


def test_outer_product_sum_is_the_sum_of_all_outer_products() -> None:
    v = torch.randn(B, 3, K, dtype=torch.float64)
    want = sum(torch.einsum("bi,bj->bij", v[:, i], v[:, j]) for i in range(3) for j in range(3))
    torch.testing.assert_close(OuterProductSum(K)(v), want.flatten(1))


@pytest.mark.parametrize("product", ["inner", "outer", "both"])
def test_arch_matches_hand_formula(product: str) -> None:
    torch.manual_seed(0)
    arch = PNNArch(NAMES, K, 2, hidden=(6,), product=product).double()
    embs = [torch.randn(B, K, dtype=torch.float64) for _ in NAMES]
    dense = torch.randn(B, 2, dtype=torch.float64)
    f = fields_of(arch, dense, embs)
    parts = [torch.cat(f, dim=1)]
    if product in ("inner", "both"):
        parts.append(torch.stack([(f[i] * f[j]).sum(-1) for i in range(5) for j in range(i + 1, 5)], dim=1))
    if product in ("outer", "both"):
        s = sum(f)
        parts.append(torch.einsum("bi,bj->bij", s, s).flatten(1))
    x = torch.cat(parts, dim=1)
    assert arch.mlp.in_features == x.size(1)
    want = arch.mlp(x).squeeze(-1)
    torch.testing.assert_close(arch(dense, KeyedTensor.from_tensor_list(NAMES, embs)), want)


def test_config_picks_the_product_and_rejects_others() -> None:
    arch = build_arch(ModelConfig(arch="pnn", embedding_dim=K, pnn_product="outer"), NAMES, 0)
    assert isinstance(arch, PNNArch) and arch.inner is None and arch.outer is not None
    assert build_arch(ModelConfig(arch="pnn", embedding_dim=K), NAMES, 0).product == "inner"
    with pytest.raises(ConfigError, match="pnn_product"):
        load_config(ModelConfig, None, ("pnn_product=kernel",))
    with pytest.raises(ValueError, match="product"):
        PNNArch(NAMES, K, 0, product="kernel")  # type: ignore[arg-type]
