"""Loading a packed table back into the lookup tables: its :class:`TablePlan` and per-tier values.

The packed form (:mod:`recdim.layout.packed_table`) stores only the mask, the jagged values and the tiers;
this rebuilds what the tier provider looks up: tier rows in id order, the shared column maps as stored,
per-row maps from the mask (kept columns ascending, then -1 padding, in the planner's map dtype), the id
remap the planner would choose for those rows (dense or runs), and the [n_j, d_j] tier values (padding
slots zero). A plan made by the planner comes back identical; any other plan comes back equivalent
(the same ``W ⊙ mask``, rows in id order inside each tier).

Example::

    plan2, values2 = unpack_plan(pack_table(plan, values))
    torch.equal(masked_table(plan2, values2), masked_table(plan, values))     # True
"""

from __future__ import annotations

from typing import List, Tuple

import torch

from recdim.layout.packed_table import PackedTable
from recdim.layout.tier_plan import PAD, TablePlan, TierPlan, smallest_int_dtype
from recdim.layout.tier_values import tier_values
from recdim.prune.planner import choose_remap


def _row_maps(row_mask: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """[n, width] kept columns of each row ascending, then -1."""
    n, K = row_mask.shape
    pos = torch.where(row_mask, torch.arange(K), K)
    cols = torch.sort(pos, dim=1).values
    if K < width:
        cols = torch.cat([cols, torch.full((n, width - K), K, dtype=torch.int64)], dim=1)
    cols = cols[:, :width]
    return torch.where(cols >= K, PAD, cols).to(dtype)


def unpack_plan(packed: PackedTable) -> Tuple[TablePlan, List[torch.Tensor]]:
    """The plan and tier values a packed table stands for.

    Args:
        packed: a checked packed table (:meth:`PackedTable.from_tensors` or :func:`pack_table`).

    Returns:
        ``(plan, values)``: values per tier, [n_j, d_j] float32.

    Raises:
        ValueError: a tier the plan refuses (a width that is not a positive multiple of 4).
    """
    N, K = packed.num_embeddings, packed.embedding_dim
    ids = packed.kept.set_ids()
    row_mask = packed.row_mask()
    tier = packed.row_tiers()
    map_dtype = smallest_int_dtype(PAD, max(K - 1, 0))
    global_rows = torch.full((N,), PAD, dtype=torch.int64)
    tiers: List[TierPlan] = []
    offset = 0
    for j, t in enumerate(packed.tiers):
        mine = torch.nonzero(tier == j).squeeze(1)
        rows = ids.index_select(0, mine)
        global_rows[rows] = offset + torch.arange(rows.numel())
        offset += int(rows.numel())
        cmap = (
            t.column_map if t.column_map is not None else _row_maps(row_mask.index_select(0, mine), t.width, map_dtype)
        )
        tiers.append(TierPlan(t.name, t.feature_name, t.width, t.rows, cmap))
    plan = TablePlan(packed.name, packed.feature, N, K, tuple(tiers), choose_remap(global_rows, offset))
    return plan, tier_values(plan, packed.dense())
