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


CR_TOLERANCE = 0.02
"""Relative difference allowed between a requested compression rate and the rate a pruned model meets."""


def check_met_cr(target: float, met: float, what: str, tolerance: float = CR_TOLERANCE) -> None:
    """Raises ``ValueError`` naming ``target`` unless ``met`` is within ``tolerance`` of it.

    Example::

        check_met_cr(1000.0, 1024.0, "dnis")   # ValueError: dnis: CR 1000 cannot be produced ...
    """
    if not abs(met / target - 1.0) <= tolerance:
        raise ValueError(
            f"{what}: CR {target:g} cannot be produced: the nearest pruned model meets CR {met:.4g} "
            f"(more than {100 * tolerance:g}% away); ask for a lower CR"
        )


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
    if keep < 1:
        raise ValueError(f"CR {cr:g} keeps no entry of the {flat.numel():,} the tables hold")
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

    The per-table case of :func:`row_dims_to_masks`.

    Args:
        rows: ``{table: N}``.
        dims: ``{table: d}`` with ``0 <= d <= K``.
        embedding_dim: K.

    Returns:
        ``{table: bool [N, K]}``.

    Example::

        prefix_masks({"user": 3}, {"user": 4}, 8)["user"].sum(1)   # tensor([4, 4, 4])
    """
    for t in rows:
        if not 0 <= dims[t] <= embedding_dim:  # checked here too: a table of 0 rows has no row to check
            raise ValueError(f"{t}: dimension {dims[t]} outside [0, {embedding_dim}]")
    return row_dims_to_masks(
        {t: torch.full((n,), int(dims[t]), dtype=torch.int64) for t, n in rows.items()}, embedding_dim
    )


def row_dims_to_masks(dims: Mapping[str, torch.Tensor], embedding_dim: int) -> Dict[str, torch.Tensor]:
    """Prefix masks from per-row dimensions: row i keeps columns ``[0, d_i)``.

    Args:
        dims: ``{feature: int64 [N]}`` in ``[0, K]``.
        embedding_dim: K.

    Returns:
        ``{feature: bool [N, K]}``.

    Example::

        row_dims_to_masks({"user": torch.tensor([8, 4, 0])}, 8)["user"].sum(1)   # tensor([8, 4, 0])
    """
    cols = torch.arange(embedding_dim, dtype=torch.int64)
    out = {}
    for f, d in dims.items():
        if d.numel() and (int(d.min()) < 0 or int(d.max()) > embedding_dim):
            bad = int(d.min()) if int(d.min()) < 0 else int(d.max())
            raise ValueError(f"{f}: dimension {bad} outside [0, {embedding_dim}]")
        out[f] = cols.unsqueeze(0) < d.to(torch.int64).unsqueeze(1)
    return out


def nonzero_masks(values: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Entries that are exactly non-zero (PEP: the soft threshold already zeroed the rest)."""
    return {k: v != 0 for k, v in values.items()}


def mask_stats(masks: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """Kept count, total and compression rate of a set of masks."""
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return {"kept": kept, "total": total, "cr": total / kept if kept else math.inf}
