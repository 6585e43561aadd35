"""Writing the tier collection's pooled output into the ``[B * F, K]`` output, row blocks at a time.

The collection returns ``[S, sum of tier widths]``: bag s of slot k in row s, at the slot's columns. Bag s
of slot k belongs to output row ``rows[k, s]`` (``sample * F + feature``; padding bags to the sink row
``B * F``), and its values go to the columns of its column map.

Padding slots of a tier (a row keeps fewer columns than the tier's width) hold exact zeros, and the scatter
sends them to columns the row does not keep, so writing them changes nothing; with that, every map row is a
permutation-free placement of w values into K columns, and prefix layouts (the frequency blocks of DNIS /
AutoSrh: each row keeps a prefix of the columns) become one shared run ``[0, w)`` for the whole tier. The
scatter runs per **piece**, a run of slots of one width, contiguous in the collection's output:

- slots whose rows all share one map of at most :data:`MAX_RUNS` contiguous column runs write each run as one
  row-block ``index_copy_`` (``index_add_`` when rows may receive several bags): memory-bound row copies;
- any other slot (per-row maps of elementwise masks) spreads its bags into a ``[bags, K]`` block by
  ``scatter_`` (its map rows gathered from narrow int8 / int16 maps), then copies or adds whole rows.

Rows are copied, not added, when no output row receives two bags (every original bag holds at most one id).
The backward is the transpose: row gathers of the output gradient (and a column ``gather`` for per-row maps),
times the padding mask, so padding slots get zero gradient and pruned entries stay exactly zero while a tier
trains. Padding bags are empty: whatever gradient they receive, the kernel drops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from recdim.layout.tier_routing import PAD_OFFSET, TierRouting
from recdim.native import native_ops_available

MAX_RUNS = 2
"""Slots whose rows share one map of at most this many contiguous column runs scatter as row blocks."""

Run = Tuple[int, int, int]  # (output column, tier column, length)


def column_runs(column_map: Sequence[int]) -> Tuple[Run, ...]:
    """Contiguous runs of a column map (padding ``< 0`` or ``>= PAD_OFFSET`` skipped).

    Example::

        column_runs([0, 1, 2, 5, 6, -1])   # ((0, 0, 3), (5, 3, 2))
    """
    runs: List[List[int]] = []
    for j, c in enumerate(column_map):
        if c < 0 or c >= PAD_OFFSET:
            continue
        if runs and runs[-1][0] + runs[-1][2] == c and runs[-1][1] + runs[-1][2] == j:
            runs[-1][2] += 1
        else:
            runs.append([c, j, 1])
    return tuple((a, b, n) for a, b, n in runs)


def fill_padding(maps: torch.Tensor, embedding_dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sends every padding slot of ``maps`` to a distinct column its row does not keep.

    Args:
        maps: [rows, w] int column maps, padding ``< 0`` or ``>= PAD_OFFSET``.
        embedding_dim: K (``w <= K``).

    Returns:
        ``(filled, valid)``: [rows, w] int64 columns in ``[0, K)``, every row's distinct, the kept ones
        unchanged and padding on the row's unkept columns in ascending order; [rows, w] bool, not padding.

    Example::

        fill_padding(torch.tensor([[0, 1, -1]]), 4)   # ([[0, 1, 2]], [[True, True, False]])
    """
    K = embedding_dim
    m = maps.to(torch.int64)
    valid = (m >= 0) & (m < PAD_OFFSET)
    kept = torch.zeros(m.size(0), K + 1, dtype=torch.bool)
    kept.scatter_(1, torch.where(valid, m, torch.full_like(m, K)), True)
    kept = kept[:, :K]
    unkept = torch.sort(torch.where(kept, K + torch.arange(K), torch.arange(K)), dim=1).values
    rank = (valid.logical_not().to(torch.int64).cumsum(1) - 1).clamp(min=0)
    return torch.where(valid, m, unkept.gather(1, rank)), valid


@dataclass(frozen=True)
class ScatterPiece:
    """Slots ``[first_slot, end_slot)`` of width ``width`` whose outputs start at ``first_column``.

    Args:
        runs: the column runs every row of every slot of the piece shares, or ``None``: per-row maps.
        padded: some slot of the piece has padding slots (the backward masks them).
    """

    first_slot: int
    end_slot: int
    width: int
    first_column: int
    runs: Optional[Tuple[Run, ...]]
    padded: bool


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        values: torch.Tensor,
        rows: torch.Tensor,
        map_row: torch.Tensor,
        scatter: "TierScatter",
        pieces: List[ScatterPiece],
        slot_column: Optional[torch.Tensor],
        num_rows: int,
        accumulate: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(rows, map_row)
        ctx.scatter, ctx.pieces, ctx.width, ctx.slot_column = scatter, pieces, values.size(1), slot_column
        if slot_column is not None:
            return torch.ops.recdim.tier_scatter(
                values,
                rows,
                map_row,
                slot_column,
                scatter.slot_width,
                scatter.slot_map_base,
                scatter.flat_maps,
                num_rows,
                scatter.embedding_dim,
                accumulate,
            )
        S, K = values.size(0), scatter.embedding_dim
        out = values.new_zeros(num_rows + 1, K)  # last row: the sink
        for p in pieces:
            if p.runs is not None:
                src, r = _slot_major(values, p, S), rows[p.first_slot : p.end_slot].reshape(-1)
                for dst, col, n in p.runs:
                    target, part = out.narrow(1, dst, n), src.narrow(1, col, n)
                    target.index_add_(0, r, part) if accumulate else target.index_copy_(0, r, part)
                continue
            for k in range(p.first_slot, p.end_slot):
                src = values.narrow(1, p.first_column + (k - p.first_slot) * p.width, p.width)
                spread = values.new_zeros(S, K).scatter_(1, scatter.columns(p.width, map_row[k]), src)
                out.index_add_(0, rows[k], spread) if accumulate else out.index_copy_(0, rows[k], spread)
        return out.narrow(0, 0, num_rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        rows, map_row = ctx.saved_tensors
        scatter = ctx.scatter
        if ctx.slot_column is not None:
            out = torch.ops.recdim.tier_scatter_backward(
                grad,
                rows,
                map_row,
                ctx.slot_column,
                scatter.slot_width,
                scatter.slot_map_base,
                scatter.flat_maps,
                ctx.width,
            )
            return out, None, None, None, None, None, None, None
        S = rows.size(1)
        grad = grad.contiguous()
        rows = rows.clamp(max=grad.size(0) - 1)  # padding bags are empty: their gradient is dropped
        out = grad.new_empty(S, ctx.width)
        for p in ctx.pieces:
            m = p.end_slot - p.first_slot
            if p.runs is not None:
                r = rows[p.first_slot : p.end_slot].reshape(-1)
                if len(p.runs) == 1 and p.runs[0][1:] == (0, p.width):
                    g = grad.narrow(1, p.runs[0][0], p.width).index_select(0, r)  # [m * S, w]
                else:
                    g = grad.new_zeros(m * S, p.width)
                    for col0, col, n in p.runs:
                        g.narrow(1, col, n).copy_(grad.narrow(1, col0, n).index_select(0, r))
                if p.padded:
                    g.masked_fill_(scatter.padding(p.width, map_row[p.first_slot : p.end_slot]), 0.0)
                dst = out.narrow(1, p.first_column, m * p.width).view(S, m, p.width)
                dst.copy_(g.view(m, S, p.width).transpose(0, 1))
                continue
            for k in range(p.first_slot, p.end_slot):
                dst = out.narrow(1, p.first_column + (k - p.first_slot) * p.width, p.width)
                g = grad.index_select(0, rows[k]).gather(1, scatter.columns(p.width, map_row[k]))
                if p.padded:
                    g.masked_fill_(scatter.padding(p.width, map_row[k]), 0.0)
                dst.copy_(g)
        return out, None, None, None, None, None, None, None


def _slot_major(values: torch.Tensor, p: ScatterPiece, S: int) -> torch.Tensor:
    """``[m * S, w]`` the piece's pooled values, slot-major (slot k's bags in sample order)."""
    m = p.end_slot - p.first_slot
    block = values.narrow(1, p.first_column, m * p.width)
    if m == 1:
        return block
    return block.reshape(S, m, p.width).transpose(0, 1).reshape(m * S, p.width)


class TierScatter(nn.Module):
    """The scatter of a :class:`~recdim.layout.tier_routing.TierRouting` (see the module docstring).

    Args:
        routing: the tier layout.
        device: where the (replicated) column maps live.

    Call:
        values (Tensor): [S, sum widths] the collection's pooled output.
        rows (Tensor): [T, S] int64 output row of every bag, ``num_rows`` for padding bags.
        map_row (Tensor): [T, S] int64 every bag's row in its width's column maps.
        slot_columns (List[int]): first column of every slot in ``values``.
        num_rows (int): ``B * F``.
        accumulate (bool): some output row may receive more than one bag.

    Returns:
        Tensor: [B * F, K].

    Example::

        out = scatter(kt.values(), batch.rows, batch.map_row, columns, B * F, batch.max_length > 1)
    """

    def __init__(self, routing: TierRouting, device: Optional[torch.device] = None) -> None:
        super().__init__()
        K = self.embedding_dim = routing.embedding_dim
        self._width_of = [s.width for s in routing.slots]
        self._runs: List[Optional[Tuple[Run, ...]]] = []
        self._padded: List[bool] = []
        filled: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {w: fill_padding(m, K) for w, m in routing.maps.items()}
        ends = {}  # slot -> end of its map rows: the next slot's first row in its width, or the maps' end
        for g in routing.groups:
            for k in range(g.first_slot, g.end_slot):
                ends[k] = int(routing.map_base[k + 1]) if k + 1 < g.end_slot else routing.maps[g.width].size(0)
        for k, s in enumerate(routing.slots):
            cols, valid = filled[s.width]
            base = int(routing.map_base[k])
            own, own_valid = cols[base : ends[k]], valid[base : ends[k]]
            n = own.size(0)
            runs = None
            if n > 0 and bool((own == own[0]).all()):
                found = column_runs(own[0].tolist())
                runs = found if len(found) <= MAX_RUNS else None
            self._runs.append(runs)
            self._padded.append(not bool(own_valid.all()))
        # One flat buffer of every width's maps, padding slots encoded as -1 - (their filled column).
        dtype = torch.int8 if K <= 128 else torch.int16
        offsets: Dict[int, int] = {}
        parts: List[torch.Tensor] = []
        base = 0
        for w, (cols, valid) in filled.items():
            offsets[w] = base
            parts.append(torch.where(valid, cols, -1 - cols).to(dtype).reshape(-1))
            base += parts[-1].numel()
        self._map_offset = offsets
        self._map_rows = {w: cols.size(0) for w, (cols, _) in filled.items()}
        flat = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
        self.register_buffer("flat_maps", flat.to(device), persistent=False)
        self.register_buffer("slot_width", torch.tensor(self._width_of, dtype=torch.int64).to(device), persistent=False)
        self.register_buffer(
            "slot_map_base",
            torch.tensor([offsets[w] for w in self._width_of], dtype=torch.int64).to(device),
            persistent=False,
        )
        self._pieces: Dict[Tuple[int, ...], List[ScatterPiece]] = {}
        self._slot_column: Dict[Tuple[int, ...], torch.Tensor] = {}

    def _maps(self, width: int, map_row: torch.Tensor) -> torch.Tensor:
        """``[map_row.numel(), w]`` encoded map rows (``-1 - column`` on padding slots)."""
        start = self._map_offset[width]
        end = start + self._map_rows[width] * width
        return self.flat_maps[start:end].view(-1, width).index_select(0, map_row.reshape(-1))

    def columns(self, width: int, map_row: torch.Tensor) -> torch.Tensor:
        """``[map_row.numel(), w]`` int64 output columns of the bags whose map rows are ``map_row``."""
        m = self._maps(width, map_row).to(torch.int64)
        return torch.where(m < 0, -1 - m, m)

    def padding(self, width: int, map_row: torch.Tensor) -> torch.Tensor:
        """``[map_row.numel(), w]`` bool: True for the padding slots of the bags whose map rows are ``map_row``."""
        return self._maps(width, map_row) < 0

    def slot_column(self, slot_columns: Sequence[int]) -> torch.Tensor:
        """``[T]`` int64 ``slot_columns`` as a tensor (cached per layout)."""
        key = tuple(slot_columns)
        found = self._slot_column.get(key)
        if found is None:
            found = self._slot_column[key] = torch.tensor(key, dtype=torch.int64, device=self.flat_maps.device)
        return found

    def pieces(self, slot_columns: Sequence[int]) -> List[ScatterPiece]:
        """The pieces for a collection output whose slot k starts at ``slot_columns[k]`` (cached per layout)."""
        key = tuple(slot_columns)
        found = self._pieces.get(key)
        if found is None:
            found = []
            for k, (w, runs, padded) in enumerate(zip(self._width_of, self._runs, self._padded)):
                last = found[-1] if found else None
                if (
                    last is not None
                    and last.width == w
                    and last.runs == runs
                    and last.end_slot == k
                    and last.first_column + (k - last.first_slot) * w == slot_columns[k]
                ):
                    found[-1] = ScatterPiece(last.first_slot, k + 1, w, last.first_column, runs, last.padded or padded)
                else:
                    found.append(ScatterPiece(k, k + 1, w, slot_columns[k], runs, padded))
            self._pieces[key] = found
        return found

    def forward(
        self,
        values: torch.Tensor,
        rows: torch.Tensor,
        map_row: torch.Tensor,
        slot_columns: Sequence[int],
        num_rows: int,
        accumulate: bool,
    ) -> torch.Tensor:
        if values.size(1) != sum(self._width_of):
            raise ValueError(f"values have {values.size(1)} columns, the tier slots {sum(self._width_of)}")
        native = values.device.type == "cpu" and values.dtype == torch.float32 and native_ops_available()
        column = self.slot_column(slot_columns) if native else None
        return _Scatter.apply(values, rows, map_row, self, self.pieces(slot_columns), column, num_rows, accumulate)
