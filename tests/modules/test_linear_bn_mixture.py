"""The BatchNorm'd linear candidate mixture against its definition (every candidate normalised on its own,
then the weighted sum), in float64: outputs, batch statistics and gradients (``gradcheck``), under batch
and running statistics, for prefix and disjoint candidate slices."""

from __future__ import annotations

from typing import List, Optional, Tuple

import pytest
import torch

from recdim.modules.linear_bn_mixture import linear_bn_mixture

B, G, K = 12, 2, 4
EPS = 1e-5
SLICES = {"prefix": [(0, 2), (0, 4), (0, 6)], "disjoint": [(0, 2), (2, 4), (6, 6)]}


def make(slices: List[Tuple[int, int]]) -> Tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    j, width = len(slices), max(a + w for a, w in slices)
    mask = torch.zeros(j * K, width, dtype=torch.float64)
    for i, (a, w) in enumerate(slices):
        mask[i * K : (i + 1) * K, a : a + w] = 1.0
    x = torch.randn(B, G, width, generator=g, dtype=torch.float64) * 0.5 + 0.3
    weight = torch.randn(G, j * K, width, generator=g, dtype=torch.float64) * mask
    bias = torch.randn(G, j * K, generator=g, dtype=torch.float64) * 0.1
    p = torch.softmax(torch.randn(G, j, generator=g, dtype=torch.float64), dim=-1)
    running = (
        torch.randn(G * j * K, generator=g, dtype=torch.float64) * 0.1,
        torch.rand(G * j * K, generator=g, dtype=torch.float64) + 0.5,
    )
    return x, weight, bias, p, mask, *running


def definition(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    p: torch.Tensor,
    mask: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sum_j p_j BN(x V_jᵀ + b_j), one candidate at a time; also the batch mean and variance of y."""
    j = p.size(1)
    y = torch.einsum("bgd,gcd->bgc", x, weight * mask) + bias  # [B, G, J*K]
    if running_mean is None:
        mu, var = y.mean(0), y.var(0, unbiased=False)
    else:
        mu, var = running_mean.view(G, -1), running_var.view(G, -1)
    z = ((y - mu) / torch.sqrt(var + EPS)).view(B, G, j, K)
    return (z * p.view(1, G, j, 1)).sum(2), y.mean(0), y.var(0, unbiased=False)


@pytest.mark.parametrize("layout", list(SLICES))
@pytest.mark.parametrize("batch_stats", [True, False])
def test_matches_definition(layout: str, batch_stats: bool) -> None:
    x, weight, bias, p, mask, rm, rv = make(SLICES[layout])
    stats = (None, None) if batch_stats else (rm, rv)
    out, mean, var = linear_bn_mixture(x, weight, bias, p, mask, *stats, eps=EPS)
    expected, mean_y, var_y = definition(x, weight, bias, p, mask, *stats)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    if batch_stats:
        torch.testing.assert_close(mean, mean_y, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(var, var_y, atol=1e-12, rtol=1e-10)
    else:
        assert mean.numel() == var.numel() == 0


@pytest.mark.parametrize("layout", list(SLICES))
@pytest.mark.parametrize("batch_stats", [True, False])
def test_gradients(layout: str, batch_stats: bool) -> None:
    x, weight, bias, p, mask, rm, rv = make(SLICES[layout])
    stats = (None, None) if batch_stats else (rm, rv)
    inputs = [t.clone().requires_grad_() for t in (x, weight, bias, p)]

    def f(*args: torch.Tensor) -> torch.Tensor:
        return linear_bn_mixture(*args, mask, *stats, eps=EPS)[0]

    assert torch.autograd.gradcheck(f, inputs)
    # against the definition's gradients, with the weight outside the mask getting none
    r = torch.randn(B, G, K, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((f(*inputs) * r).sum(), inputs)
    ref_inputs = [t.clone().requires_grad_() for t in (x, weight, bias, p)]
    ref_grads = torch.autograd.grad((definition(*ref_inputs, mask, *stats)[0] * r).sum(), ref_inputs)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    assert torch.equal(grads[1] * (1 - mask), torch.zeros_like(grads[1]))
    if batch_stats:
        assert torch.equal(grads[2], torch.zeros_like(grads[2]))  # the batch mean absorbs the bias


def test_needs_only_what_is_asked() -> None:
    """With the blocks and transform parameters out of the graph (an architecture step), only p's gradient
    is computed, and it equals the full one."""
    x, weight, bias, p, mask, _, _ = make(SLICES["prefix"])
    pg = p.clone().requires_grad_()
    r = torch.randn(B, G, K, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (g_only,) = torch.autograd.grad((linear_bn_mixture(x, weight, bias, pg, mask)[0] * r).sum(), [pg])
    full = [t.clone().requires_grad_() for t in (x, weight, bias, p)]
    g_full = torch.autograd.grad((linear_bn_mixture(*full, mask)[0] * r).sum(), full)[3]
    torch.testing.assert_close(g_only, g_full, atol=1e-12, rtol=1e-10)
