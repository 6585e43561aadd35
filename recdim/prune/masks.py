"""Per-row column masks at a budget: the step between a search method and the table planner.

A mask is a bool tensor [N, K] per table: entry (i, k) is kept when column k of row i is stored.
Compression rate (CR) in recdim is ``uniform parameters / kept parameters`` over all tables together:
CR 4 keeps a quarter of the N·K values (the papers' "4× fewer embedding parameters").
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

import torch


def kept_for_cr(total: int, cr: float) -> int:
    """Number of values kept out of ``total`` at compression rate ``cr`` (>= 1)."""
    if cr < 1:
        raise ValueError(f"compression rate must be >= 1 (uniform / kept), got {cr}")
    return int(round(total / cr))


def magnitude_masks(
    values: Mapping[str, torch.Tensor], cr: Optional[float] = None, eps: Optional[float] = None
) -> Dict[str, torch.Tensor]:
    """Fine-grained magnitude pruning over all tables at once (DNIS / AutoSrh).

    Keeps the entries with the largest ``|value|``; with ``cr`` exactly ``kept_for_cr(total, cr)`` of
    them (ties broken by table order, then row-major position, so the count is exact), with ``eps``
    every entry with ``|value| >= eps``.

    Args:
        values: ``{table: [N, K]}`` effective embedding values (for DNIS, ``e_i ⊙ alpha[block(i)]``).
        cr: target compression rate.
        eps: magnitude threshold (instead of ``cr``).

    Returns:
        ``{table: bool [N, K]}``.

    Example::

        masks = magnitude_masks({"t_user": w_user * alpha_rows}, cr=4.0)
    """
    if (cr is None) == (eps is None):
        raise ValueError("give exactly one of cr and eps")
    if eps is not None:
        return {k: v.abs() >= eps for k, v in values.items()}
    flat = torch.cat([v.detach().abs().reshape(-1).float() for v in values.values()])
    keep = kept_for_cr(flat.numel(), cr)  # type: ignore[arg-type]
    mask_flat = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep > 0:
        # Stable descending sort: equal magnitudes keep their position order, so the count is exact.
        order = torch.sort(flat, descending=True, stable=True).indices
        mask_flat[order[:keep]] = True
    out: Dict[str, torch.Tensor] = {}
    offset = 0
    for k, v in values.items():
        out[k] = mask_flat[offset : offset + v.numel()].view(v.shape)
        offset += v.numel()
    return out


def prefix_masks(rows: Mapping[str, int], dims: Mapping[str, int], embedding_dim: int) -> Dict[str, torch.Tensor]:
    """Every row of table t keeps its first ``dims[t]`` columns (AutoDim, uniform and MDE baselines).

    Args:
        rows: ``{table: N}``.
        dims: ``{table: d}`` with ``0 <= d <= K``.
        embedding_dim: K.

    Returns:
        ``{table: bool [N, K]}``.
    """
    out = {}
    for t, n in rows.items():
        d = dims[t]
        if not 0 <= d <= embedding_dim:
            raise ValueError(f"{t}: dimension {d} outside [0, {embedding_dim}]")
        m = torch.zeros(n, embedding_dim, dtype=torch.bool)
        m[:, :d] = True
        out[t] = m
    return out


def nonzero_masks(values: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Entries that are exactly non-zero (PEP: the soft threshold already zeroed the rest)."""
    return {k: v != 0 for k, v in values.items()}


def mask_stats(masks: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """Kept count, total and compression rate of a set of masks."""
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return {"kept": kept, "total": total, "cr": total / kept if kept else math.inf}
