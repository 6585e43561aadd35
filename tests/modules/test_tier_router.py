"""The native router (``torch.ops.recdim.tier_route``) builds the same batch as the eager counting sort: pooled
and per-id bags, dropped ids, empty bags, per-value weights."""

import pytest
import torch

from recdim.modules.tiered import TieredEmbeddingProvider
from recdim.native import native_ops_available
from tests.modules.test_tiered import MULTI, make_bags, setup, to_kjt

pytestmark = pytest.mark.skipif(not native_ops_available(), reason="native kernels unavailable")


def _route(provider, kjt, weighted):
    kjt = provider.ordered_features(kjt)
    rows = provider.remap(kjt.values(), kjt.length_per_key())
    return provider.router(rows, kjt.lengths(), kjt.weights() if weighted else None, kjt.stride())


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("B", [1, 7, 64])
def test_native_route_equals_eager(B, weighted, monkeypatch):
    plans, weights = setup(seed=B)
    provider = TieredEmbeddingProvider.from_masked_weights(plans, weights, multi_valued=MULTI, is_weighted=weighted)
    kjt = to_kjt(make_bags(B, seed=B + 10), range(B), weighted)
    native = _route(provider, kjt, weighted)
    monkeypatch.setenv("RECDIM_NATIVE", "0")
    eager = _route(provider, kjt, weighted)
    assert native.num_rows == eager.num_rows and native.max_length == eager.max_length
    a, b = native.features, eager.features
    assert a.keys() == b.keys() and a.stride() == b.stride()
    assert a.length_per_key() == b.length_per_key()
    assert torch.equal(a.values(), b.values()) and a.values().dtype == b.values().dtype
    assert torch.equal(a.lengths(), b.lengths())
    if weighted:
        assert torch.equal(a.weights(), b.weights())
    assert torch.equal(native.rows, eager.rows)
    assert torch.equal(native.map_row, eager.map_row)
