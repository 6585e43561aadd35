"""The weighted sum of J candidates ``BatchNorm(Linear_j(x))`` per feature, without the J * K channels.

For one feature with block x [B, D] (candidate j reads the columns of its mask), candidate weights
``V_j = W_j * mask_j`` [K, D], biases ``b_j`` and mixing weights ``p_j``, AutoDim's transform and mixture is

    ``out = sum_j p_j * BN(x V_jᵀ + b_j)``   (BatchNorm1d(K) per candidate, no affine).

With batch statistics BN subtracts ``x̄ V_jᵀ + b_j`` and divides by ``s_j = sqrt(diag(V_j C V_jᵀ) + eps)``,
where ``x̄`` and ``C`` are the batch mean and (biased) covariance of x, so

    ``out = (x - x̄) Mᵀ``,  ``M = sum_j diag(p_j / s_j) V_j``  [K, D];

with running statistics (mean ``r_j``, variance ``v_j``) ``s_j = sqrt(v_j + eps)`` and
``out = x Mᵀ + sum_j (p_j / s_j) (b_j - r_j)``. Either way the mixture is one [B, D] x [D, K] matmul per
feature plus O(J K D) work on the weights, where normalising every candidate costs J * K channels per
row in forward and backward. :func:`linear_bn_mixture` runs this for the G features of a group, [B, G, D],
as one autograd function with a hand-written backward (the gradients of x, the weights, the biases and
p are those of the per-candidate formulation; the bias gradient is exactly zero under batch statistics,
as BatchNorm's is up to rounding).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable


class _LinearBatchNormMixture(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        p: torch.Tensor,
        mask: torch.Tensor,
        running_mean: Optional[torch.Tensor],
        running_var: Optional[torch.Tensor],
        eps: float,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, g, d = x.shape
        j = p.size(1)
        jk = weight.size(1)
        k = jk // j
        v = weight * mask  # [G, J*K, D]
        batch_stats = running_mean is None
        if batch_stats:
            mean = x.mean(dim=0)  # [G, D]
            base = x.new_empty((g, b, d))  # centred x by feature, the layout bmm takes and writes
            torch.sub(x.transpose(0, 1), mean.unsqueeze(1), out=base)
            cov = torch.bmm(base.transpose(1, 2), base).div_(b)  # [G, D, D]
            vc = torch.bmm(v, cov)  # [G, J*K, D]
            var = (vc * v).sum(dim=-1)  # [G, J*K]: biased batch variance of every candidate channel
            center = None
        else:
            assert running_var is not None
            base = x.transpose(0, 1)  # [G, B, D], strided: bmm reads it in place
            var = running_var.view(g, jk)
            center = (bias - running_mean.view(g, jk)).view(g, j, k)
        inv = (var + eps).rsqrt()  # [G, J*K]
        scale = p.unsqueeze(-1) * inv.view(g, j, k)  # [G, J, K]: p_j / s_j
        m = (v.view(g, j, k, d) * scale.unsqueeze(-1)).sum(dim=1)  # [G, K, D]
        if batch_stats:
            y = torch.bmm(base, m.transpose(1, 2))  # [G, B, K]
            mean_y = torch.baddbmm(bias.unsqueeze(-1), v, mean.unsqueeze(-1)).squeeze(-1)  # [G, J*K]
        else:
            shift = (center * scale).sum(dim=1)  # [G, K]
            y = torch.baddbmm(shift.unsqueeze(1), base, m.transpose(1, 2))
            mean_y = var = x.new_empty((0,))
        ctx.batch_stats = batch_stats
        ctx.save_for_backward(base, v, mask, p, inv, scale, m, vc if batch_stats else center)
        ctx.mark_non_differentiable(mean_y, var)
        return y.transpose(0, 1).contiguous(), mean_y, var

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor, *_: Optional[torch.Tensor]) -> Tuple[Any, ...]:  # type: ignore[override]
        base, v, mask, p, inv, scale, m, extra = ctx.saved_tensors
        need_x, need_w, need_b, need_p = ctx.needs_input_grad[:4]
        g, jk, d = v.shape
        j = p.size(1)
        k = jk // j
        go = grad_out.transpose(0, 1)  # [G, B, K], strided
        gm = torch.bmm(go.transpose(1, 2), base)  # [G, K, D]: the gradient of M
        gscale = (v.view(g, j, k, d) * gm.unsqueeze(1)).sum(dim=-1)  # [G, J, K]
        gx = gv = gbias = None
        if ctx.batch_stats:
            vc = extra
            if need_x or need_w:
                # scale = p / sqrt(var + eps), var = diag(V C Vᵀ)
                gvar = (gscale * p.unsqueeze(-1)).view(g, jk) * inv.pow(3).mul_(-0.5)  # [G, J*K]
                if need_w:
                    gv = (
                        (scale.unsqueeze(-1) * gm.unsqueeze(1))
                        .view(g, jk, d)
                        .addcmul_(vc, gvar.unsqueeze(-1), value=2.0)
                    )
                if need_x:
                    b = base.size(1)
                    gcov = torch.bmm(v.transpose(1, 2) * gvar.unsqueeze(1), v)  # [G, D, D], symmetric
                    # out = xc Mᵀ with xc = x - x̄: (I - 11ᵀ/B) go M; cov = xcᵀ xc / B: xc (gcov + gcovᵀ) / B
                    gx = torch.bmm(go, m).baddbmm_(base, gcov, alpha=2.0 / b)  # [G, B, D]
                    # the centring's constant row, subtracted while writing x's layout
                    row = (grad_out.mean(dim=0).unsqueeze(-1) * m).sum(dim=1)  # [G, D] = mean_b(go) M
                    gx = torch.sub(gx.transpose(0, 1), row, out=gx.new_empty((b, g, d)))
            if need_b:
                gbias = torch.zeros_like(inv)  # the batch mean of y absorbs b
        else:
            center = extra
            gshift = grad_out.sum(dim=0)  # [G, K]
            gscale = gscale + center * gshift.unsqueeze(1)
            if need_w:
                gv = (scale.unsqueeze(-1) * gm.unsqueeze(1)).view(g, jk, d)
            if need_b:
                gbias = (scale * gshift.unsqueeze(1)).view(g, jk)
            if need_x:
                gx = torch.bmm(go, m).transpose(0, 1).contiguous()
        gweight = gv * mask if gv is not None else None
        gp = (gscale * inv.view(g, j, k)).sum(dim=-1) if need_p else None
        return gx, gweight, gbias, gp, None, None, None, None


def linear_bn_mixture(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    p: torch.Tensor,
    mask: torch.Tensor,
    running_mean: Optional[torch.Tensor] = None,
    running_var: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sum_j p[g, j] * BN(x[:, g] V_gjᵀ + b_gj)`` for the G features of a group.

    Args:
        x: blocks [B, G, D], any strides with a dense last dimension (e.g. a view of KeyedTensor values).
        weight: [G, J * K, D], candidate j in rows ``[j K, (j + 1) K)``.
        bias: [G, J * K].
        p: mixing weights [G, J].
        mask: [J * K, D], 1 where a candidate's weight reads a column (``V = weight * mask``).
        running_mean: [G * J * K] to normalise with running statistics, or ``None`` for batch statistics.
        running_var: [G * J * K], with ``running_mean``.
        eps: BatchNorm's epsilon.

    Returns:
        ``(out, mean, var)``: ``out`` [B, G, K]; with batch statistics ``mean`` and ``var`` [G, J * K] are
        the batch mean and biased batch variance of every candidate channel (for the running statistics;
        no gradient), else they are empty.

    Example::

        out, mean, var = linear_bn_mixture(x, t.weight, t.bias, torch.softmax(alpha, -1), t.mask)
        out.shape                                   # [B, G, K]
    """
    return _LinearBatchNormMixture.apply(x, weight, bias, p, mask, running_mean, running_var, eps)
