"""EmbeddingL2 adds exactly the gradient of lambda * sum_b ||e_b||^2 / B, and nothing in the forward."""

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.modules.embedding_l2 import EmbeddingL2


def test_gradient_equals_explicit_penalty():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(6, 8, generator=g, requires_grad=True)
    proj = torch.randn(6, 8, generator=g)
    reg = EmbeddingL2(0.3).train()
    kt = reg(KeyedTensor(keys=["a", "b"], length_per_key=[4, 4], values=values))
    assert torch.equal(kt.values(), values) and kt.keys() == ["a", "b"]
    (kt.values() * proj).sum().backward()
    ref = values.detach().clone().requires_grad_(True)
    ((ref * proj).sum() + 0.3 * ref.pow(2).sum() / 6).backward()
    torch.testing.assert_close(values.grad, ref.grad, rtol=0, atol=1e-6)


def test_no_op_in_eval_and_at_zero():
    values = torch.randn(3, 4, requires_grad=True)
    kt = KeyedTensor(keys=["a"], length_per_key=[4], values=values)
    assert EmbeddingL2(0.5).eval()(kt) is kt
    assert EmbeddingL2(0.0).train()(kt) is kt
    with pytest.raises(ValueError, match=">= 0"):
        EmbeddingL2(-1.0)
