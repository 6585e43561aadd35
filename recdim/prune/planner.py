"""The tier planner: a pruned table's column mask -> the cheapest mixed-dimension :class:`TablePlan`.

Algorithm (per table, N rows, K columns, at most T = ``max_tiers`` tiers, widths from a palette
w_1 < ... < w_C of multiples of 4: all multiples of 4 up to K by default, or ``PlannerConfig.widths``):

1. Rows that keep nothing are dropped. The others are grouped by their column set; group g has n_g rows
   keeping k_g columns, width class c_g = the smallest palette width w_c >= k_g.
2. Every tier is priced as stored, with m = bytes per column-map entry (1 for K <= 128, else 2):
   a tier whose rows share one column set is a **shared** tier, ``n * d * 4 + d * m`` bytes; any other
   tier holds **per-row** maps, ``n * d * (4 + m)`` bytes, with d = the width of the largest class it holds.
3. An exact dynamic programme over width classes, from widest to narrowest, chooses which groups get
   a shared tier of their own and at which widths per-row tiers open. State: (width of the narrowest
   per-row tier opened so far, tiers used). At class c it may open a per-row tier of width w_c, then
   gives the j largest groups of the class shared tiers (within a class, sharing the largest groups is
   always best) and sends the rest of the class to the narrowest open per-row tier (the cheapest one that
   holds them). It costs O(C * T) vector steps of size C * T. When G <= T every group simply gets its
   own shared tier.

Guarantee: among all partitions of the kept rows into at most T tiers with palette widths, priced as in
step 2, the plan has the fewest value + column-map bytes (ties broken towards fewer tiers);
``tests/prune/test_planner.py`` checks this against brute force over all partitions on small tables.
The remap is chosen afterwards (it is not part of the optimisation): a dense per-id array of the
narrowest integer type, or runs of consecutive ids when that is smaller (frequency-blocked masks).
Per-row maps appear only when the table has more distinct column sets than ``max_tiers`` allows shared
tiers for.

A smaller palette (e.g. ``widths=(4, 8, 16, 32)``) costs some padding but bounds the number of distinct
widths over all tables, hence the EmbeddingCollections the tier provider runs per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from recdim.layout.tier_plan import (
    PAD,
    DenseRemap,
    IdRemap,
    RunRemap,
    TablePlan,
    TierPlan,
    smallest_int_dtype,
    tier_feature_name,
    tier_table_name,
)

_WORD_BITS = 62


@dataclass(frozen=True)
class PlannerConfig:
    """How the planner may tier a table.

    Args:
        max_tiers: T, the most tiers per table (more tiers: less padding, more lookups).
        widths: the tier widths allowed (multiples of 4); empty means every multiple of 4 up to K. The
            smallest multiple of 4 holding K is always allowed.

    Example::

        plan = plan_table(mask, "t_user", "user", PlannerConfig(max_tiers=4, widths=(4, 8, 16, 32)))
    """

    max_tiers: int = 4
    widths: Tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tiers < 1:
            raise ValueError(f"max_tiers must be >= 1, got {self.max_tiers}")
        bad = [w for w in self.widths if w <= 0 or w % 4]
        if bad:
            raise ValueError(f"tier widths must be positive multiples of 4 (FBGEMM's TBE), got {bad}")

    def palette(self, embedding_dim: int) -> List[int]:
        """The allowed widths for a K-wide table, ascending, the widest holding K."""
        top = (embedding_dim + 3) // 4 * 4
        if not self.widths:
            return list(range(4, top + 1, 4))
        return sorted({w for w in self.widths if w < top} | {top})


@dataclass(frozen=True)
class _Groups:
    """Rows grouped by column set: ``inverse`` [N] group per row (-1 dropped), per group its column
    set [G, K], row count and width class."""

    inverse: torch.Tensor
    columns: torch.Tensor
    counts: np.ndarray
    classes: np.ndarray


def _group_rows(mask: torch.Tensor, palette: List[int]) -> _Groups:
    N, K = mask.shape
    kept = mask.any(dim=1)
    m = mask.to(torch.int64)
    words = []
    for lo in range(0, K, _WORD_BITS):
        chunk = m[:, lo : lo + _WORD_BITS]
        words.append((chunk << torch.arange(chunk.size(1), dtype=torch.int64)).sum(dim=1))
    key = torch.stack(words, dim=1) if words else torch.zeros(N, 1, dtype=torch.int64)
    idx = torch.nonzero(kept).squeeze(1)
    inverse = torch.full((N,), -1, dtype=torch.int64)
    if idx.numel() == 0:
        return _Groups(inverse, torch.zeros(0, K, dtype=torch.bool), np.zeros(0, np.int64), np.zeros(0, np.int64))
    uniq, inv, counts = torch.unique(key[idx], dim=0, return_inverse=True, return_counts=True)
    inverse[idx] = inv
    first = torch.full((uniq.size(0),), N, dtype=torch.int64).scatter_reduce(0, inv, idx, reduce="amin")
    columns = mask[first]
    k = columns.sum(dim=1).numpy()
    classes = np.searchsorted(np.asarray(palette), k, side="left") + 1  # 1-based: width palette[c - 1]
    return _Groups(inverse, columns, counts.numpy().astype(np.int64), classes)


def _solve(groups: _Groups, palette: List[int], T: int, m: int) -> Tuple[List[int], Dict[int, int]]:
    """The DP of the module docstring.

    Returns:
        (groups with a shared tier, {group: width class of the per-row tier holding it}).
    """
    C, INF = len(palette), float("inf")
    cost = np.full((C + 1, T + 1), INF)
    cost[0, 0] = 0.0
    covers = np.asarray([0] + palette, dtype=np.float64)  # width of each cover state (0: none open)
    by_class: Dict[int, np.ndarray] = {}
    history = []  # per class: (class, choice_open, choice_j, choice_prev_cover) arrays [C+1, T+1]
    for c in range(C, 0, -1):
        members = np.nonzero(groups.classes == c)[0]
        members = members[np.argsort(-groups.counts[members], kind="stable")]
        by_class[c] = members
        prefix = np.concatenate([[0], np.cumsum(groups.counts[members])])
        total = prefix[-1]
        new = np.full_like(cost, INF)
        ch_open = np.zeros(cost.shape, dtype=np.int8)
        ch_j = np.zeros(cost.shape, dtype=np.int64)
        ch_prev = np.zeros(cost.shape, dtype=np.int64)
        best_prev = cost.min(axis=0)  # [T + 1] over covers
        arg_prev = cost.argmin(axis=0)
        for j in range(0, min(len(members), T) + 1):
            rest = total - prefix[j]
            wc = palette[c - 1]
            shared = 4.0 * wc * prefix[j] + j * wc * m
            # Keep the current per-row cover (none: only when nothing of the class is left for it).
            per_row = rest * covers * (4 + m)
            if rest > 0:
                per_row[0] = INF
            cand = cost[:, : T + 1 - j] + (shared + per_row)[:, None]
            tgt = new[:, j:]
            better = cand < tgt
            tgt[better] = cand[better]
            ch_open[:, j:][better], ch_j[:, j:][better] = 0, j
            ch_prev[:, j:][better] = np.broadcast_to(np.arange(C + 1)[:, None], better.shape)[better]
            # Open a per-row tier of width w_c for this class and everything narrower.
            if T - 1 - j >= 0:
                cand_o = best_prev[: T - j] + shared + rest * wc * (4 + m)
                tgt_o = new[c, j + 1 :]
                better_o = cand_o < tgt_o
                tgt_o[better_o] = cand_o[better_o]
                ch_open[c, j + 1 :][better_o], ch_j[c, j + 1 :][better_o] = 1, j
                ch_prev[c, j + 1 :][better_o] = arg_prev[: T - j][better_o]
        cost = new
        history.append((c, ch_open, ch_j, ch_prev))
    best = cost.min()
    if not np.isfinite(best):
        raise RuntimeError("no feasible tiering (this is a bug: one per-row tier always fits)")
    # Among the cheapest end states, the one with the fewest tiers.
    cover, t = (int(x) for x in min(zip(*np.nonzero(cost == best)), key=lambda s: s[1]))
    shared_groups: List[int] = []
    per_row: Dict[int, int] = {}
    for c, ch_open, ch_j, ch_prev in history[::-1]:
        j, opened, prev = int(ch_j[cover, t]), int(ch_open[cover, t]), int(ch_prev[cover, t])
        members = by_class[c]
        shared_groups += [int(g) for g in members[:j]]
        for g in members[j:]:
            per_row[int(g)] = cover
        cover, t = prev, t - j - opened
    return shared_groups, per_row


def _column_map(columns: torch.Tensor, width: int, K: int, dtype: torch.dtype) -> torch.Tensor:
    """[..., width] kept columns of each mask row in ascending order, then -1 padding."""
    pos = torch.where(columns, torch.arange(K), torch.full_like(columns, K, dtype=torch.int64))
    cols = torch.sort(pos, dim=-1).values
    if cols.size(-1) < width:
        cols = torch.cat([cols, torch.full((*cols.shape[:-1], width - cols.size(-1)), K, dtype=torch.int64)], dim=-1)
    cols = cols[..., :width]
    return torch.where(cols >= K, torch.full_like(cols, PAD), cols).to(dtype)


def choose_remap(global_rows: torch.Tensor, kept_rows: int) -> IdRemap:
    """The smaller of a dense per-id remap and a run remap for ``global_rows`` ([N] int64, -1 dropped)."""
    N = global_rows.numel()
    dense = DenseRemap(global_rows.to(smallest_int_dtype(PAD, max(kept_rows - 1, 0))))
    if N == 0:
        return dense
    prev = torch.cat([torch.tensor([-2]), global_rows[:-1]])
    cont = ((global_rows >= 0) & (prev >= 0) & (global_rows == prev + 1)) | (
        (global_rows < 0) & (prev < 0) & (prev > -2)
    )
    starts = torch.nonzero(~cont).squeeze(1)
    runs = RunRemap(
        starts.to(smallest_int_dtype(0, max(N - 1, 0))),
        global_rows[starts].to(smallest_int_dtype(PAD, max(kept_rows - 1, 0))),
    )
    return runs if runs.nbytes < dense.nbytes else dense


def plan_table(mask: torch.Tensor, name: str, feature: str, config: PlannerConfig = PlannerConfig()) -> TablePlan:
    """Tiers for one pruned table at the fewest bytes under ``config.max_tiers`` (see module docstring).

    Args:
        mask: [N, K] bool, True where row i keeps column c.
        name: the table's name (tiers are ``<name>__tier<j>``).
        feature: the feature it embeds (tiers read ``<feature>@@tier<j>``).
        config: tier budget and width palette.

    Returns:
        TablePlan: tiers widest first, shared before per-row at equal width, rows in id order inside a
        tier; every kept (row, column) stored exactly once, dropped rows not at all.

    Example::

        mask = torch.rand(1000, 16) < 0.3
        plan = plan_table(mask, "t_item", "item", PlannerConfig(max_tiers=3))
        plan.bytes().total < plan.bytes().uniform
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be [N, K], got shape {tuple(mask.shape)}")
    mask = mask.to(torch.bool).cpu()
    N, K = mask.shape
    palette = config.palette(K)
    map_dtype = smallest_int_dtype(PAD, max(K - 1, 0))
    m = torch.empty(0, dtype=map_dtype).element_size()
    groups = _group_rows(mask, palette)
    G = len(groups.counts)
    if G <= config.max_tiers:
        shared, per_row = list(range(G)), {}
    else:
        shared, per_row = _solve(groups, palette, config.max_tiers, m)

    # Tier contents: (kind, groups). A per-row tier holding a single column set becomes shared.
    contents: List[Tuple[bool, List[int]]] = [(True, [g]) for g in shared]
    by_cover: Dict[int, List[int]] = {}
    for g, cover in per_row.items():
        by_cover.setdefault(cover, []).append(g)
    for members in by_cover.values():
        contents.append((len(members) == 1, sorted(members)))

    group_rows = _rows_by_group(groups.inverse, G)
    tiers_raw = []
    for is_shared, members in contents:
        rows = torch.sort(torch.cat([group_rows[g] for g in members])).values
        width = palette[int(max(groups.classes[g] for g in members)) - 1]
        first_id = int(rows[0])
        tiers_raw.append((-width, 0 if is_shared else 1, first_id, is_shared, members, rows, width))
    tiers_raw.sort(key=lambda x: x[:3])

    tiers: List[TierPlan] = []
    global_rows = torch.full((N,), PAD, dtype=torch.int64)
    offset = 0
    for j, (_, _, _, is_shared, members, rows, width) in enumerate(tiers_raw):
        cmap = _column_map(groups.columns[members[0]] if is_shared else mask[rows], width, K, map_dtype)
        tiers.append(TierPlan(tier_table_name(name, j), tier_feature_name(feature, j), width, int(rows.numel()), cmap))
        global_rows[rows] = offset + torch.arange(rows.numel())
        offset += int(rows.numel())
    return TablePlan(name, feature, N, K, tuple(tiers), choose_remap(global_rows, offset))


def _rows_by_group(inverse: torch.Tensor, G: int) -> List[torch.Tensor]:
    kept = torch.nonzero(inverse >= 0).squeeze(1)
    order = torch.argsort(inverse[kept], stable=True)
    sizes = torch.bincount(inverse[kept], minlength=G).tolist()
    return list(torch.split(kept[order], sizes))


def plan_tables(
    masks: Mapping[str, torch.Tensor],
    config: PlannerConfig = PlannerConfig(),
    table_name: Optional[Callable[[str], str]] = None,
) -> List[TablePlan]:
    """One :class:`TablePlan` per feature, in ``masks`` order.

    Args:
        masks: ``{feature: [N_f, K] bool}``.
        config: tier budget and width palette.
        table_name: feature -> table name (default: the uniform provider's ``t_<feature>``).

    Returns:
        List[TablePlan]: one per feature.

    Example::

        plans = plan_tables({"user": user_mask, "item": item_mask}, PlannerConfig(max_tiers=4))
    """
    if table_name is None:
        from recdim.modules.uniform import table_name as uniform_name

        table_name = uniform_name
    return [plan_table(mask, table_name(f), f, config) for f, mask in masks.items()]
