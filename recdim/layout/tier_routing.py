"""Where every tier of a tiered provider is looked up: its slot in the one tier collection, its bucket, its maps.

Pure bookkeeping over :class:`~recdim.layout.tier_plan.TablePlan` s (tensors and lists, no modules), so that
:class:`~recdim.modules.tiered.TieredEmbeddingProvider` only builds tables and buffers from it.

Slots. Every tier of every feature is one table of one EmbeddingBagCollection, at its own width; its **slot**
is its position there. Slots are ordered by **bucket**, then by feature. A bucket is a ``(width, rank)`` pair —
the rank-th tier of that width in its feature's plan — and buckets run from the widest width down, so

- every width is a contiguous range of slots and of output columns (a :class:`WidthGroup`): one gather of
  column-map rows per width builds the scatter index of a batch;
- routing a batch is one counting sort of its ids by bucket: inside a bucket ids keep their KJT order
  (feature, then sample), which is slot order, then sample order.

Row space. Inside a feature the lookup numbers the kept rows bucket after bucket (rows keep their order inside
a tier; for planner output, whose tiers are widest first, this is the plan's own numbering). ``boundaries[f]``
holds the first row of every bucket in that space, then the dropped bucket ``[kept rows, DROPPED_END)``:
dropped ids are sent anywhere in it.

Column maps. ``maps[width]`` stacks the column maps of the width's slots (one row for a shared map, one per
table row otherwise) as int32, padding slots as :data:`PAD_OFFSET`, so that ``row * K + map`` lands past the
``[B, F, K]`` output for padding (the scatter clamps it onto one sink element).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Set, Tuple

import torch

from recdim.layout.tier_plan import TablePlan

DROPPED_END = 2**31 - 1
"""End of every feature's dropped bucket: lookup rows are int32."""

PAD_OFFSET = 2**30
"""Map value of a padding slot: ``row * K + PAD_OFFSET`` exceeds every output index while ``B * F * K <= 2**30``."""


@dataclass(frozen=True)
class TierSlot:
    """One tier table as the lookup sees it.

    Args:
        feature: index of its feature (plan) in output order.
        tier: index of the tier in its plan.
        bucket: its bucket (slots are ordered by bucket, then feature).
        width: d, the table width.
        pooled: a shared-map tier of a multi-valued feature: one bag per (sample, tier), pooled by the kernel
            and scattered once; otherwise one bag per id.
    """

    feature: int
    tier: int
    bucket: int
    width: int
    pooled: bool


@dataclass(frozen=True)
class WidthGroup:
    """Slots ``[first_slot, end_slot)``, all of width ``width``, whose pooled outputs fill the collection's
    output columns ``[first_column, first_column + (end_slot - first_slot) * width)``."""

    width: int
    first_slot: int
    end_slot: int
    first_column: int

    @property
    def num_slots(self) -> int:
        return self.end_slot - self.first_slot


def _buckets(plans: Sequence[TablePlan]) -> Tuple[List[Tuple[int, int]], List[List[int]]]:
    """The buckets ``(width, rank)``, widest first, and per plan the bucket of each tier."""
    ranks: List[List[Tuple[int, int]]] = []
    for p in plans:
        seen: Dict[int, int] = {}
        keys = []
        for t in p.tiers:
            keys.append((t.width, seen.get(t.width, 0)))
            seen[t.width] = seen.get(t.width, 0) + 1
        ranks.append(keys)
    buckets = sorted({k for keys in ranks for k in keys}, key=lambda wr: (-wr[0], wr[1]))
    index = {b: q for q, b in enumerate(buckets)}
    return buckets, [[index[k] for k in keys] for keys in ranks]


@dataclass
class TierRouting:
    """The lookup layout of a list of table plans (see the module docstring).

    Args:
        embedding_dim: K.
        slots: every tier, in slot order.
        groups: the width groups, in slot order.
        buckets: ``(width, rank)`` per bucket; bucket ``len(buckets)`` is the dropped bucket.
        tier_rows: per plan, the first lookup row of each tier (plan order), then the kept rows.
        boundaries: [F, Q + 2] int32, per feature the first lookup row of each bucket, its kept rows and
            :data:`DROPPED_END`.
        slot_of: [(Q + 1) * F] int64, the slot of (bucket, feature), -1 where there is none.
        maps: ``{width: [rows, width]}`` int32 column maps of the width's slots, padding :data:`PAD_OFFSET`.
        map_base: [slots] int64, the slot's first row in ``maps[width]``.
        map_stride: [slots] int64, 1 when each table row has its own map row, 0 for a shared map.
    """

    embedding_dim: int
    slots: List[TierSlot]
    groups: List[WidthGroup]
    buckets: List[Tuple[int, int]]
    tier_rows: List[List[int]]
    boundaries: torch.Tensor
    slot_of: torch.Tensor
    maps: Dict[int, torch.Tensor]
    map_base: torch.Tensor
    map_stride: torch.Tensor

    @property
    def num_buckets(self) -> int:
        """Q, the kept buckets (the dropped bucket comes after them)."""
        return len(self.buckets)

    @property
    def total_width(self) -> int:
        """Sum of the slots' widths: the collection's output columns."""
        return sum(s.width for s in self.slots)

    def renumber(self, plan_index: int, plan: TablePlan, rows: torch.Tensor) -> torch.Tensor:
        """Plan rows of ``plan`` (-1 dropped) -> lookup rows (dropped -> its kept rows, in the dropped bucket).

        Args:
            plan_index: the plan's feature index.
            plan: the plan.
            rows: int64 plan rows.

        Returns:
            Tensor: int64 lookup rows, same shape.
        """
        if not plan.tiers:
            return torch.full_like(rows, plan.kept_rows)
        offsets = torch.tensor(plan.tier_offsets, dtype=torch.int64)
        new = torch.tensor(self.tier_rows[plan_index], dtype=torch.int64)
        tier = (torch.searchsorted(offsets, rows.clamp(min=0), right=True) - 1).clamp(max=len(plan.tiers) - 1)
        moved = rows - offsets[tier] + new[tier]
        return torch.where(rows >= 0, moved, torch.full_like(rows, plan.kept_rows))

    @staticmethod
    def build(plans: Sequence[TablePlan], multi_valued: Set[str], embedding_dim: int) -> "TierRouting":
        """The routing of ``plans``; ``multi_valued`` features pool their shared-map tiers.

        Example::

            r = TierRouting.build(plans, {"genres"}, 16)
            [(g.width, g.num_slots) for g in r.groups]
        """
        K, F = embedding_dim, len(plans)
        buckets, bucket_of = _buckets(plans)
        Q = len(buckets)
        slots = [
            TierSlot(fi, j, bucket_of[fi][j], t.width, t.shared and p.feature in multi_valued)
            for fi, p in enumerate(plans)
            for j, t in enumerate(p.tiers)
        ]
        slots.sort(key=lambda s: (s.bucket, s.feature))

        groups: List[WidthGroup] = []
        column = 0
        for k, s in enumerate(slots):
            if not groups or groups[-1].width != s.width:
                groups.append(WidthGroup(s.width, k, k + 1, column))
            else:
                g = groups[-1]
                groups[-1] = WidthGroup(g.width, g.first_slot, k + 1, g.first_column)
            column += s.width

        tier_rows: List[List[int]] = []
        boundaries = torch.empty(F, Q + 2, dtype=torch.int64)
        for fi, p in enumerate(plans):
            starts, row = [0] * len(p.tiers), 0
            bucket_start = []
            for q in range(Q):
                bucket_start.append(row)
                for j, t in enumerate(p.tiers):
                    if bucket_of[fi][j] == q:
                        starts[j] = row
                        row += t.num_rows
            tier_rows.append(starts + [row])
            boundaries[fi] = torch.tensor(bucket_start + [row, DROPPED_END])

        slot_of = torch.full(((Q + 1) * F,), -1, dtype=torch.int64)
        for k, s in enumerate(slots):
            slot_of[s.bucket * F + s.feature] = k

        maps: Dict[int, torch.Tensor] = {}
        map_base = torch.zeros(len(slots), dtype=torch.int64)
        map_stride = torch.zeros(len(slots), dtype=torch.int64)
        for g in groups:
            parts, n = [], 0
            for k in range(g.first_slot, g.end_slot):
                t = plans[slots[k].feature].tiers[slots[k].tier]
                cmap = t.column_map.view(-1, g.width).to(torch.int32)
                parts.append(cmap.masked_fill(cmap < 0, PAD_OFFSET))
                map_base[k], map_stride[k] = n, 0 if t.shared else 1
                n += parts[-1].size(0)
            maps[g.width] = torch.cat(parts)
        return TierRouting(
            K, slots, groups, buckets, tier_rows, boundaries.to(torch.int32), slot_of, maps, map_base, map_stride
        )
