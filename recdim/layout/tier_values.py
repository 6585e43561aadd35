"""Moving values between a K-wide table and its tiers: ``W ⊙ mask`` <-> per-tier dense tables."""

from __future__ import annotations

from typing import List, Sequence

import torch

from recdim.layout.tier_plan import TablePlan


def tier_values(plan: TablePlan, weight: torch.Tensor) -> List[torch.Tensor]:
    """The tier tables holding ``weight``'s kept entries (padding slots are zero).

    Entries outside the plan's mask are ignored, so ``weight`` may be the unmasked table: this is how a
    pruned model is exported and how lottery-ticket rewinding loads initial values into tiers.

    Args:
        plan: the table's plan.
        weight: [N, K] float.

    Returns:
        List[Tensor]: per tier, [n_j, d_j] in ``weight``'s dtype.

    Example::

        tiers = tier_values(plan, uniform_weight)      # [t.shape for t in tiers] == [(n_j, d_j), ...]
    """
    N, K = plan.num_embeddings, plan.embedding_dim
    if tuple(weight.shape) != (N, K):
        raise ValueError(f"table {plan.name}: weight shape {tuple(weight.shape)} != plan's [{N}, {K}]")
    ids, offsets = plan.row_ids().to(weight.device), plan.tier_offsets
    padded = torch.cat([weight, torch.zeros(N, 1, dtype=weight.dtype, device=weight.device)], dim=1)
    out = []
    for j, maps in enumerate(plan.row_maps()):
        rows = ids[offsets[j] : offsets[j + 1]]
        cols = torch.where(maps >= 0, maps.to(torch.int64), K).to(weight.device)
        out.append(padded[rows.unsqueeze(1), cols].contiguous())
    return out


def masked_table(plan: TablePlan, tiers: Sequence[torch.Tensor]) -> torch.Tensor:
    """The K-wide table the tiers stand for: kept entries from the tiers, zeros elsewhere.

    Args:
        plan: the table's plan.
        tiers: per tier, [n_j, d_j].

    Returns:
        Tensor: [N, K].

    Example::

        torch.equal(masked_table(plan, tier_values(plan, w)), w * plan.mask())   # True
    """
    if len(tiers) != len(plan.tiers):
        raise ValueError(f"table {plan.name}: {len(tiers)} tier tensors for {len(plan.tiers)} tiers")
    N, K = plan.num_embeddings, plan.embedding_dim
    dtype = tiers[0].dtype if tiers else torch.float32
    device = tiers[0].device if tiers else torch.device("cpu")
    out = torch.zeros(N, K + 1, dtype=dtype, device=device)
    ids, offsets = plan.row_ids().to(device), plan.tier_offsets
    for j, (t, maps) in enumerate(zip(tiers, plan.row_maps())):
        if tuple(t.shape) != (plan.tiers[j].num_rows, plan.tiers[j].width):
            raise ValueError(
                f"{plan.tiers[j].name}: shape {tuple(t.shape)} != [{plan.tiers[j].num_rows}, {plan.tiers[j].width}]"
            )
        rows = ids[offsets[j] : offsets[j + 1]].unsqueeze(1).expand_as(maps)
        cols = torch.where(maps >= 0, maps.to(torch.int64), K).to(device)
        out[rows, cols] = t.detach()
    return out[:, :K]
