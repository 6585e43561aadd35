"""The soft threshold S(V, t) and its fused forms: the same values and sub-gradients as the definition."""

from __future__ import annotations

import pytest
import torch

from recdim.modules.soft_threshold import fast_soft_threshold, paired_soft_threshold, soft_threshold

K = 8


def test_soft_threshold_definition() -> None:
    v = torch.tensor([[0.5, -0.5, 0.05, -0.05]])
    torch.testing.assert_close(soft_threshold(v, torch.tensor(0.1)), torch.tensor([[0.4, -0.4, 0.0, 0.0]]))


def test_fused_ops_against_composite_at_ties_and_zeros() -> None:
    """Values at exactly +-t and 0 (sub-gradient 0), thresholds of any broadcast shape, both gates."""
    v = torch.tensor([[0.5, -0.5, 0.2, -0.2, 0.0, 0.3, -0.7, 0.1]]).repeat(3, 1)
    for t in (torch.tensor([0.2]), torch.full((8,), 0.2), torch.tensor([[0.2], [0.0], [0.4]])):
        a, b = v.clone().requires_grad_(), v.clone().requires_grad_()
        ta, tb = t.clone().requires_grad_(), t.clone().requires_grad_()
        w = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
        (fast_soft_threshold(a, ta) * w).sum().backward()
        (soft_threshold(b, tb) * w).sum().backward()
        torch.testing.assert_close(fast_soft_threshold(v, t), soft_threshold(v, t), rtol=0, atol=0)
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
        torch.testing.assert_close(ta.grad, tb.grad)
    for gate in (torch.sigmoid, torch.exp):
        rows = torch.randn(5, 2 * K, generator=torch.Generator().manual_seed(1)) - torch.tensor([0.0, 2.0] * K)
        a, b = rows.clone().requires_grad_(), rows.clone().requires_grad_()
        w = torch.randn(5, K, generator=torch.Generator().manual_seed(2))
        (paired_soft_threshold(a, torch.tensor(0.5), gate) * w).sum().backward()
        (soft_threshold(b[:, 0::2], gate(b[:, 1::2] + 0.5)) * w).sum().backward()
        torch.testing.assert_close(a.grad, b.grad)
    with pytest.raises(ValueError):
        paired_soft_threshold(rows, torch.tensor(0.0), torch.tanh)
