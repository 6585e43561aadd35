"""One id remap for every feature of a tiered provider: original ids -> lookup rows, one pass per remap kind."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from recdim.layout.tier_plan import DenseRemap, RunRemap, TablePlan
from recdim.layout.tier_routing import DROPPED_END, TierRouting

DENSE, RUNS = "dense", "runs"

RUN_BLOCK = 16
"""Ids per entry of a run remap's block directory (the native lookup's search range)."""


def _split_runs(plan: TablePlan) -> Tuple[torch.Tensor, torch.Tensor]:
    """The plan's runs cut at its tier offsets, so that each run lies inside one tier (or is dropped).

    Returns:
        ``(starts, bases)``: [R'] int64 first id and first plan row (-1 dropped) of every run.
    """
    remap = plan.remap
    assert isinstance(remap, RunRemap)
    starts, bases = remap.starts.to(torch.int64), remap.bases.to(torch.int64)
    ends = torch.cat([starts[1:], torch.tensor([plan.num_embeddings])])
    new_starts, new_bases = [starts], [bases]
    for o in plan.tier_offsets[1:-1]:
        cut = (bases >= 0) & (bases < o) & (o < bases + ends - starts)
        new_starts.append(starts[cut] + (o - bases[cut]))
        new_bases.append(torch.full((int(cut.sum()),), o, dtype=torch.int64))
    s, b = torch.cat(new_starts), torch.cat(new_bases)
    order = torch.argsort(s)
    return s[order], b[order]


class TierRemap(nn.Module):
    """Original ids of every feature -> int32 rows of the tier collection's row space (see
    :class:`~recdim.layout.tier_routing.TierRouting`).

    Features with a dense remap share one concatenated int32 table (one ``index_select``), features with a run
    remap one concatenated list of runs (one ``searchsorted``); a batch runs one such op per stretch of
    consecutive features of one kind (one in all when every plan chose the same kind). Dropped ids land in
    their feature's dropped bucket. Ids must lie in ``[0, N_f)``.

    Args:
        plans: one plan per feature, in KJT order.
        routing: their routing.
        device: where the (replicated, non-trainable) buffers live.

    Call:
        ids (Tensor): [n] int64, the KJT's values (features in plan order).
        length_per_key (List[int]): ids per feature.

    Returns:
        Tensor: [n] int32 lookup rows.

    Example::

        remap = TierRemap(plans, TierRouting.build(plans, set(), K))
        rows = remap(kjt.values(), kjt.length_per_key())
    """

    def __init__(self, plans: Sequence[TablePlan], routing: TierRouting, device: Optional[torch.device] = None) -> None:
        super().__init__()
        kinds = [DENSE if isinstance(p.remap, DenseRemap) else RUNS for p in plans]
        for p in plans:
            if p.num_embeddings + p.kept_rows >= DROPPED_END:
                raise ValueError(f"table {p.name}: {p.num_embeddings} rows do not fit int32 lookup rows")
        offsets: List[int] = []
        dense: List[torch.Tensor] = []
        starts: List[torch.Tensor] = []
        deltas: List[torch.Tensor] = []
        size = {DENSE: 0, RUNS: 0}
        per_feature: List[List[int]] = []  # kind, id offset, ids, first run, end run, directory offset
        directory: List[torch.Tensor] = []
        runs = directory_size = 0
        for fi, (p, kind) in enumerate(zip(plans, kinds)):
            offsets.append(size[kind])
            if kind == DENSE:
                dense.append(routing.renumber(fi, p, p.remap.global_rows(p.num_embeddings)).to(torch.int32))
            else:
                s, b = _split_runs(p)
                rows = routing.renumber(fi, p, b)
                starts.append(s + size[kind])
                deltas.append(rows - (s + size[kind]))
            first, dir_offset = runs, directory_size
            if kind == RUNS:
                runs += s.numel()
                # The run holding the first id of every block of RUN_BLOCK ids, and the feature's last run: a
                # lookup searches only the runs of its id's block.
                block_starts = torch.arange(0, p.num_embeddings, RUN_BLOCK, dtype=torch.int64)
                entry = torch.searchsorted(s, block_starts, right=True) - 1 + first
                directory.append(torch.cat([entry, torch.tensor([runs - 1])]))
                directory_size += directory[-1].numel()
            per_feature.append([int(kind == RUNS), size[kind], p.num_embeddings, first, runs, dir_offset])
            size[kind] += p.num_embeddings
        self._segments: List[Tuple[int, int, str]] = []  # (first feature, end feature, kind)
        for fi, kind in enumerate(kinds):
            if self._segments and self._segments[-1][2] == kind:
                self._segments[-1] = (self._segments[-1][0], fi + 1, kind)
            else:
                self._segments.append((fi, fi + 1, kind))

        def buf(name: str, parts: List[torch.Tensor], dtype: torch.dtype) -> None:
            value = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
            self.register_buffer(name, value.to(dtype=dtype, device=device), persistent=False)

        buf("id_offsets", [torch.tensor(offsets, dtype=torch.int64)], torch.int64)
        # The native one-pass lookup remaps from these: [F, 6] int64 per feature (run remap (1) or dense (0), id
        # offset, ids, first and end run, offset of its block directory), and the run directories.
        buf("features", [torch.tensor(per_feature, dtype=torch.int64).view(-1, 6)], torch.int64)
        buf("run_directory", directory, torch.int64)
        buf("dense", dense, torch.int32)
        buf("run_starts", starts, torch.int64)
        buf("run_deltas", deltas, torch.int64)

    def _lookup(self, kind: str, key: torch.Tensor) -> torch.Tensor:
        if kind == DENSE:
            return self.dense.index_select(0, key)
        r = torch.searchsorted(self.run_starts, key, right=True) - 1
        return (key + self.run_deltas.index_select(0, r)).to(torch.int32)

    def forward(self, ids: torch.Tensor, length_per_key: List[int]) -> torch.Tensor:
        n = ids.numel()
        per_key = torch.tensor(length_per_key, dtype=torch.int64, device=ids.device)
        key = ids.to(torch.int64) + self.id_offsets.repeat_interleave(per_key, output_size=n)
        if len(self._segments) == 1:
            return self._lookup(self._segments[0][2], key)
        ends = [0]
        for length in length_per_key:
            ends.append(ends[-1] + length)
        return torch.cat([self._lookup(kind, key[ends[a] : ends[b]]) for a, b, kind in self._segments])
