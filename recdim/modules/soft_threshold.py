"""The soft threshold S(V, t) = sign(V) * relu(|V| - t) of PEP, its fused forms, and survival keys.

:func:`soft_threshold` is the definition (any gate). For the gates with a known derivative (sigmoid, exp:
non-negative thresholds), :func:`fast_soft_threshold` and :func:`paired_soft_threshold` (thresholds stored
beside the values, ``[V0, s0, V1, s1, ...]``) give the same values and sub-gradients from a few float
passes, without the zero-filled and boolean temporaries autograd's composite makes (on CPU these passes
cost as much as the pooled lookup they follow). For the gates with a known inverse, :func:`survival_keys`
says which values survive as a key per value that a shifted threshold (the ramp's offset) leaves in place.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch

Gate = Callable[[torch.Tensor], torch.Tensor]

GATES: Dict[str, Gate] = {"sigmoid": torch.sigmoid, "exp": torch.exp}


def soft_threshold(values: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """S(V, t) = sign(V) * relu(|V| - t), elementwise with broadcasting.

    Args:
        values: V, [..., K].
        threshold: t = g(s), broadcastable to V.

    Returns:
        Tensor: V's shape; zero wherever |V| <= t.

    Example::

        soft_threshold(torch.tensor([[0.5, -0.05]]), torch.tensor(0.1))   # [[0.4, 0.0]]
    """
    return torch.sign(values) * torch.relu(values.abs() - threshold)


# Gates with a known derivative: gate -> ((t, -t) -> -g'(x)), the negated derivative written in terms of
# the gate's output t = g(x) (and -t, which the fused forward has at hand). Both gates are non-negative,
# which the fused soft threshold needs.
NEG_GATE_GRADS: Dict[Gate, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    torch.sigmoid: lambda t, neg_t: neg_t.addcmul_(t, t),  # t^2 - t = -t (1 - t); -t is not needed after
    torch.exp: lambda t, neg_t: neg_t,
}


def _logit_of_magnitude(magnitude: torch.Tensor) -> torch.Tensor:
    """log(a / (1 - a)) in float64 from a >= 0: -inf at 0, +inf for a >= 1 (sigmoid < 1 everywhere)."""
    return torch.logit(magnitude.to(torch.float64).clamp_(max=1.0))


# Gates whose inverse is known, as functions of |V| (float32, >= 0) returning float64 g^{-1}(|V|) (see
# survival_keys).
GATE_INVERSES: Dict[Gate, Callable[[torch.Tensor], torch.Tensor]] = {
    torch.sigmoid: _logit_of_magnitude,
    torch.exp: lambda magnitude: torch.log(magnitude.to(torch.float64)),
}


# Gates whose inverse is known, float32 estimates (see estimate_survival_keys): |V| (a fresh float32 tensor,
# overwritten) -> g^{-1}(|V|) within about 2^-23 * (|g^{-1}(|V|)| + 2) of the float64 value.
GATE_INVERSES_F32: Dict[Gate, Callable[[torch.Tensor], torch.Tensor]] = {
    torch.sigmoid: lambda magnitude: torch.logit_(magnitude.clamp_(max=1.0)),
    torch.exp: lambda magnitude: torch.log_(magnitude),
}


def estimate_survival_keys(values: torch.Tensor, s: torch.Tensor, gate: Gate) -> torch.Tensor:
    """float32 estimates of :func:`survival_keys`, for screening: the float32 inverse of the same float32
    magnitude is within a few ulps of the float64 one (subnormal magnitudes included; 0 gives -inf and, under
    the sigmoid, ``|V| >= 1`` gives +inf, as in the float64 keys), so an estimate farther than about
    ``2^-20 * (|g^{-1}(|V|)| + |s| + 4)`` from an offset is on the same side of it as the float64 key. NaN
    where V or s is NaN.

    Args:
        values: V, float32 [..., k].
        s: thresholds, float32, broadcastable to V.
        gate: one of :data:`GATE_INVERSES_F32`.

    Returns:
        Tensor: float32, V's shape.

    Example::

        rough = estimate_survival_keys(v, s, torch.sigmoid)   # ~= survival_keys(v, s, torch.sigmoid).float()
    """
    if gate not in GATE_INVERSES_F32:
        raise ValueError(f"estimate_survival_keys needs a gate with a known inverse, got {gate}")
    return GATE_INVERSES_F32[gate](values.abs()).sub_(s)


def survival_keys(values: torch.Tensor, s: torch.Tensor, gate: Gate) -> torch.Tensor:
    """Per value, the offset below which it survives: ``S(V, g(s + offset)) != 0`` iff ``key > offset``.

    For a monotone gate g, ``|V| > g(s + offset)`` iff ``g^{-1}(|V|) - s > offset``, so the key moves only
    when V or s does, not with the offset (a ramp that lifts every threshold leaves every key in place).
    Keys are float64: the survival they define agrees with the float32 forward pass except for values
    within about 1e-7 (relative) of their threshold. Under the sigmoid ``|V| >= 1`` survives every offset
    (key +inf: sigmoid < 1); ``V = 0`` survives none (-inf).

    Args:
        values: V, float32 [..., k].
        s: thresholds, broadcastable to V.
        gate: one of :data:`GATE_INVERSES`.

    Returns:
        Tensor: float64, V's shape.

    Example::

        keys = survival_keys(v, s, torch.sigmoid)
        nnz = int(torch.count_nonzero(keys > provider.threshold_offset.double()))
    """
    if gate not in GATE_INVERSES:
        raise ValueError(f"survival_keys needs a gate with a known inverse ({list(GATE_INVERSES)}), got {gate}")
    return GATE_INVERSES[gate](values.abs()).sub_(s)


def _fused_forward(values: torch.Tensor, threshold: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(S, sign(S), -t)`` for t >= 0: ``S = V - clamp(V, -t, t)`` holds the same values as
    sign(V) relu(|V| - t), and sign(S) is sign(V) where |V| > t, 0 elsewhere, so it carries both the mask
    and the sign of the sub-gradient (float ops only: no boolean temporaries)."""
    neg_threshold = torch.neg(threshold)
    clamped = torch.clamp(values, neg_threshold, threshold)
    out = torch.sub(values, clamped, out=clamped)  # in place of the temporary: one row-sized buffer less
    return out, torch.sign(out), neg_threshold


class _SoftThreshold(torch.autograd.Function):
    """S(V, t) for t >= 0 with the sub-gradient written out: with d = sign(S),
    dS/dV = 1[|V| > t] = d^2 and dS/dt = -sign(V) 1[|V| > t] = -d."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        out, kept_sign, _ = _fused_forward(values, threshold)
        ctx.threshold_shape = threshold.shape
        ctx.save_for_backward(kept_sign)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        (kept_sign,) = ctx.saved_tensors
        signed = grad * kept_sign
        grad_threshold = signed.sum_to_size(ctx.threshold_shape).neg() if ctx.needs_input_grad[1] else None
        return signed * kept_sign, grad_threshold


class _PairedSoftThreshold(torch.autograd.Function):
    """S(V, g(s + offset)) of interleaved rows ``[..., (V, s) * K]``; the gradient is built as one interleaved
    tensor (slicing V and s apart under autograd would zero-fill and add two row-sized tensors):
    dS/dV = d^2, dS/ds = -d g'(s + offset) with d = sign(S)."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, offset: torch.Tensor, gate: Gate) -> torch.Tensor:
        pairs = rows.reshape(*rows.shape[:-1], -1, 2)
        threshold = gate(torch.add(pairs[..., 1], offset))
        out, kept_sign, neg_threshold = _fused_forward(pairs[..., 0], threshold)
        ctx.save_for_backward(kept_sign, NEG_GATE_GRADS[gate](threshold, neg_threshold))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], None, None]:
        kept_sign, neg_slope = ctx.saved_tensors
        signed = grad * kept_sign
        grad_values = signed * kept_sign
        grad_s = signed.mul_(neg_slope)  # signed is not needed after
        if grad.dtype in (torch.float32, torch.float64):
            # torch.complex packs (real, imag) pairs: the interleaved [..., K, 2] layout in one fast pass
            pairs = torch.view_as_real(torch.complex(grad_values, grad_s))
        else:
            pairs = torch.stack([grad_values, grad_s], dim=-1)
        return pairs.reshape(*kept_sign.shape[:-1], -1), None, None


def fast_soft_threshold(values: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """:func:`soft_threshold` for non-negative thresholds (e.g. from a gate in :data:`NEG_GATE_GRADS`): the
    same values and sub-gradients, in fewer passes over [..., K].

    Example::

        fast_soft_threshold(v, torch.sigmoid(s))    # == soft_threshold(v, torch.sigmoid(s))
    """
    return _SoftThreshold.apply(values, threshold)


def paired_soft_threshold(rows: torch.Tensor, offset: torch.Tensor, gate: Gate) -> torch.Tensor:
    """S(V, g(s + offset)) of rows holding K interleaved (value, threshold) pairs.

    Args:
        rows: [..., 2K], ``[V0, s0, V1, s1, ...]`` (contiguous in the last dim).
        offset: added to every s (a scalar tensor, not trained).
        gate: g, one of :data:`NEG_GATE_GRADS`.

    Returns:
        Tensor: [..., K].

    Example::

        out = paired_soft_threshold(ebc_rows.view(B, G, 2 * K), provider.threshold_offset, torch.sigmoid)
    """
    if gate not in NEG_GATE_GRADS:
        raise ValueError(
            f"paired_soft_threshold needs a gate with a known derivative ({list(NEG_GATE_GRADS)}), got {gate}"
        )
    return _PairedSoftThreshold.apply(rows, offset, gate)
