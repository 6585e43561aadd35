"""Frequency blocks as id segments: the unit both random search and MDE give one dimension to."""

from __future__ import annotations

from typing import List, Mapping, Tuple

import numpy as np

from recdim.layout.blocks import BlockPlan
from recdim.layout.dims import Segment


def block_segments(plan: BlockPlan) -> Tuple[List[Segment], np.ndarray]:
    """Every (feature, block) id range, and the alpha row it belongs to.

    Args:
        plan: the frequency blocks (``make_block_plan``).

    Returns:
        ``(segments, rows)``: F * L segments in (feature, block) order (empty ones included) and [F * L]
        int64 alpha rows (block b for global blocking, ``f * L + b`` per table).

    Example::

        segs, rows = block_segments(per_table_blocks({"user": 10}, 2))   # [user 0:5, user 5:10], [0, 1]
    """
    segments: List[Segment] = []
    rows: List[int] = []
    for f, bounds in zip(plan.features, plan.boundaries):
        base = plan.alpha_row_offset(f)
        for b in range(plan.num_blocks):
            segments.append(Segment(f, int(bounds[b]), int(bounds[b + 1])))
            rows.append(base + b)
    return segments, np.asarray(rows, dtype=np.int64)


def segment_popularity(segments: List[Segment], counts: Mapping[str, np.ndarray]) -> np.ndarray:
    """p per segment: the mean train count of its ids over all train occurrences of all features.

    The p of MDE's power rule is the probability that a query hits a given row of the block. Counts are
    read in id order capped at their running minimum, as :func:`recdim.layout.blocks.global_blocks`
    does: the OOV id (last) collects every rare value and would otherwise lend its count to the rare ids
    of its block.

    Args:
        segments: id ranges.
        counts: ``{feature: [N] train counts}``.

    Returns:
        [S] float64 (0 for an empty segment).
    """
    capped = {
        f: np.minimum.accumulate(np.asarray(c, dtype=np.int64)) if len(c) else np.zeros(0, np.int64)
        for f, c in counts.items()
    }
    total = float(sum(int(np.asarray(c, dtype=np.int64).sum()) for c in counts.values()))
    out = np.zeros(len(segments), dtype=np.float64)
    if total <= 0:
        return out
    for i, s in enumerate(segments):
        if s.rows > 0:
            out[i] = float(capped[s.feature][s.start : s.stop].mean()) / total
    return out
