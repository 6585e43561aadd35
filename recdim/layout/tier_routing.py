"""Where every tier of a tiered provider is looked up: pooled or per id, its slot, and its index tables.

Pure bookkeeping over :class:`~recdim.layout.tier_plan.TablePlan` s (tensors and lists, no modules), so
that :class:`~recdim.modules.tiered.TieredEmbeddingProvider` only builds tables and buffers from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Set, Tuple

import torch

from recdim.layout.tier_plan import TablePlan, TierPlan, smallest_int_dtype

# Routes of a tier.
POOLED, PER_ID = 0, 1


def tier_route(tier: TierPlan, multi_valued: bool) -> int:
    """Shared-map tiers of multi-valued features pool in the EBC; everything else goes per id."""
    return POOLED if tier.shared and multi_valued else PER_ID


@dataclass
class TierRouting:
    """The lookup layout of a list of table plans.

    Tiers are numbered globally (``tiers``, plan after plan). Slots order them for the lookup: the pooled
    tiers (the EmbeddingBagCollection's keys) first, then the per-id tiers grouped by width (one
    EmbeddingCollection per width), so every per-id width is a contiguous slot range.

    Args:
        tiers: ``(feature index, tier, route)`` per global tier.
        slot_order: slot -> global tier.
        num_pooled: the first ``num_pooled`` slots are pooled.
        widths: per-id widths, ascending (one EmbeddingCollection each).
        per_id: ``{width: global tiers}`` in slot order.
        segments: ``(first slot, end slot, width)`` per width.
        row_base: per plan, its first row in the concatenation of all kept rows.
        tier_starts: per global tier, its first row in that concatenation.
        slot_of_tier: global tier -> slot.
        tier_feature: global tier -> feature index.
        maps: ``{width: [rows, width]}`` column maps of the per-id tiers of that width, padding (-1) as
            the sink column K.
        map_base: per global tier, its first row in ``maps[width]``.
        map_stride: per global tier, 1 when every row has its own map row, 0 when one row is shared.
    """

    tiers: List[Tuple[int, TierPlan, int]]
    slot_order: List[int]
    num_pooled: int
    widths: List[int]
    per_id: Dict[int, List[int]]
    segments: List[Tuple[int, int, int]]
    row_base: List[int]
    tier_starts: List[int]
    slot_of_tier: List[int]
    tier_feature: List[int]
    maps: Dict[int, torch.Tensor]
    map_base: List[int]
    map_stride: List[int]

    @property
    def pooled(self) -> List[int]:
        """Global tiers of the pooled slots."""
        return self.slot_order[: self.num_pooled]

    def keys(self, tiers: Sequence[int]) -> List[str]:
        """KJT keys of ``tiers`` (global indices)."""
        return [self.tiers[g][1].feature_name for g in tiers]

    @staticmethod
    def build(plans: Sequence[TablePlan], multi_valued: Set[str], embedding_dim: int) -> "TierRouting":
        """The routing of ``plans``; ``multi_valued`` features pool their shared-map tiers.

        Example::

            r = TierRouting.build(plans, {"genres"}, 16)
            r.segments       # [(first slot, end slot, width), ...]
        """
        tiers = [(fi, t, tier_route(t, p.feature in multi_valued)) for fi, p in enumerate(plans) for t in p.tiers]
        pooled = [g for g, (_, _, r) in enumerate(tiers) if r == POOLED]
        widths = sorted({t.width for _, t, r in tiers if r == PER_ID})
        per_id = {w: [g for g, (_, t, r) in enumerate(tiers) if r == PER_ID and t.width == w] for w in widths}
        slot_order = pooled + [g for w in widths for g in per_id[w]]
        segments, lo = [], len(pooled)
        for w in widths:
            segments.append((lo, lo + len(per_id[w]), w))
            lo += len(per_id[w])
        row_base, starts = [0], [0]
        for p in plans:
            row_base.append(row_base[-1] + p.kept_rows)
            starts += [row_base[-2] + o for o in p.tier_offsets[1:]]
        slot_of_tier = [0] * len(tiers)
        for s, g in enumerate(slot_order):
            slot_of_tier[g] = s
        # (K = 128 with int8 maps: the sink K needs int16 at run time)
        base, stride, maps = [0] * len(tiers), [0] * len(tiers), {}
        for w in widths:
            parts, n = [], 0
            for g in per_id[w]:
                t = tiers[g][1]
                base[g], stride[g] = n, 0 if t.shared else 1
                cmap = t.column_map.view(-1, w).to(
                    torch.promote_types(t.column_map.dtype, smallest_int_dtype(0, embedding_dim))
                )
                parts.append(cmap.masked_fill(cmap < 0, embedding_dim))
                n += parts[-1].size(0)
            maps[w] = torch.cat(parts)
        return TierRouting(
            tiers,
            slot_order,
            len(pooled),
            widths,
            per_id,
            segments,
            row_base[:-1],
            starts,
            slot_of_tier,
            [fi for fi, _, _ in tiers],
            maps,
            base,
            stride,
        )
