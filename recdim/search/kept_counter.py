"""Counting PEP's surviving values step by step without scanning every table.

With thresholds stored in the table (``feature_dimension``) a value survives iff its survival key
``g^{-1}(|V|) - s`` is above the ramp's offset (:func:`~recdim.modules.soft_threshold.survival_keys`). The
key of a row changes only when the fused (sparse) optimizer updates the row, i.e. when a training batch
looks it up; the offset moves every value's threshold at once but no key. So a step only re-keys the
rows it touched (O(touched rows * K), not O(N * K)), and the count is read off what is kept of the keys:

- :class:`StoredKeys` (small tables): the keys themselves; the count compares them all with the offset.
- :class:`BinnedKeys` (large tables): each key's bin ``#{j : q_j < key}`` among the offsets of the coming
  checks q_0 <= q_1 <= ... (:class:`OffsetGrid`; the ramp's, known ahead) and how many keys each bin holds:
  at offset q_j the survivors are the keys in the bins above j. Bins come from exact comparisons with the
  offsets, so the count is the one a full count makes.

:class:`KeptCounter` rebuilds everything (one pass over the shards) when the offset is not the grid's next
one (a schedule it was not told about), when the grid runs out, or when a shard was written other than by
the fused optimizer (``Tensor._version``: loading a checkpoint, the trainer restoring its best state).

Counts are all-reduced across ranks like :func:`~recdim.search.pep_tables.count_nonzeros`; the rows each
rank's batches touched are gathered first, since a table's owner sees the lookups of every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor

from recdim.modules.soft_threshold import Gate, estimate_survival_keys, survival_keys
from recdim.modules.threshold import ThresholdEmbeddingProvider
from recdim.search.pep_tables import rank_and_world, table_pieces

# Values re-keyed at a time: the temporaries of one chunk (a few float64 copies) stay in cache.
CHUNK_VALUES = 1 << 16

# The most local values FrozenKeys keys at once (8 bytes each: 1 GiB).
FROZEN_KEY_LIMIT = 1 << 27

# Upcoming offsets of the checks after the current one (how many are asked for) -> their values.
Upcoming = Callable[[int], Sequence[float]]


def fused_sparse_tables(provider: ThresholdEmbeddingProvider) -> bool:
    """Whether every table of the provider is trained by a fused optimizer inside the lookup kernel, so that
    a step changes only the rows its batch looked up (TorchRec's sharded modules with the fused kernel;
    not the dense kernel, whose Adam moves every row, nor an unsharded module). The same answer on every
    rank (collective when world > 1)."""
    fused_everywhere = True
    for module in (provider.ebc, provider.ec):
        if module is None:
            continue
        fused = getattr(module, "fused_optimizer", None)
        covered = set(fused.params) if fused is not None else set()
        for key, value in module.state_dict().items():
            local = not isinstance(value, ShardedTensor) or bool(value.local_shards())
            fused_everywhere &= not local or key in covered
    if rank_and_world()[1] > 1:
        flag = torch.tensor([int(fused_everywhere)], device=provider.threshold_offset.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        fused_everywhere = bool(flag.item())
    return fused_everywhere


class OffsetGrid:
    """The offsets of the coming checks and the exact bin of a survival key among them.

    Args:
        offsets: q_0 <= q_1 <= ... (float32 values, as the offset buffer will hold them); only the longest
            prefix that is evenly spaced (within float32 rounding) is kept, so bins come from one division
            and an exact correction.

    Example::

        grid = OffsetGrid([0.0, 0.01, 0.02])
        grid.bins(torch.tensor([-1.0, 0.005, 0.01, 5.0], dtype=torch.float64))   # [0, 1, 1, 3]
    """

    def __init__(self, offsets: Sequence[float]) -> None:
        q = torch.tensor(list(offsets), dtype=torch.float64)
        if q.numel() == 0:
            raise ValueError("OffsetGrid needs at least the current offset")
        n = q.numel()
        if n > 1:
            step = float(q[1] - q[0])
            ideal = q[0] + step * torch.arange(n, dtype=torch.float64)
            tolerance = 1e-6 * (q.abs() + abs(step)) + 1e-12
            ok = ((q - ideal).abs() <= tolerance) & (step >= 0)
            ok[0] = True
            n = int(ok.long().cumprod(0).sum())
            q = q[:n]
        self.offsets = q
        self.step = float(q[1] - q[0]) if n > 1 else 0.0
        ideal = q[0] + self.step * torch.arange(n, dtype=torch.float64)
        self._deviation = float((q - ideal).abs().max())  # of the offsets from the even spacing
        self._largest = float(q.abs().max())
        # neighbours[b] = (q_(b-1), q_b), with NaN before q_0 (no comparison holds) and +inf after the last:
        # bin b is right iff neither q_(b-1) >= key nor q_b < key
        padded = torch.cat([q.new_full((1,), float("nan")), q, q.new_full((1,), float("inf"))])
        self._neighbours = torch.stack([padded[:-1], padded[1:]], dim=1)

    def __len__(self) -> int:
        return self.offsets.numel()

    def index(self, offset: float, start: int = 0) -> Optional[int]:
        """The first j >= start with q_j == offset, or ``None``."""
        hits = (self.offsets[start:] == offset).nonzero()
        return start + int(hits[0]) if hits.numel() else None

    def bins(self, keys: torch.Tensor) -> torch.Tensor:
        """``#{j : q_j < key}`` for float64 keys (any shape), as int16 (the grid holds < 32767 offsets).

        The evenly spaced estimate ``ceil((key - q_0) / step)`` is off by at most one (the offsets differ
        from the even spacing by float32 rounding, far less than half a step), which one exact comparison
        with each neighbour corrects.
        """
        n = len(self)
        flat = keys.reshape(-1)
        if self.step > 0:
            b = flat.sub(float(self.offsets[0])).div_(self.step).ceil_().clamp_(0, n).to(torch.int64).clamp_(0, n)
        else:
            b = (flat > float(self.offsets[0])).to(torch.int64).mul_(n)
        near = self._neighbours.index_select(0, b)
        b.add_(near[:, 1] < flat)  # q_b < key: one more
        b.add_(near[:, 0] >= flat, alpha=-1)  # q_(b-1) >= key: one less
        return b.to(torch.int16).view(keys.shape)

    def screened_bins(self, values: torch.Tensor, s: torch.Tensor, gate: Gate) -> torch.Tensor:
        """``bins(survival_keys(values, s, gate))``, from float32 estimates of the keys
        (:func:`~recdim.modules.soft_threshold.estimate_survival_keys`): an estimate that is farther from every
        offset than its error bound has the bin ``ceil((key - q_0) / step)``; only the others (a few percent
        when the offsets are more than ~1e-4 apart) are keyed in float64 and binned exactly. Same result as
        :meth:`bins` of the float64 keys, in about half the passes, all float32.

        Args:
            values: V, float32 [r, k] (any strides).
            s: thresholds, float32 [r, k].
            gate: one of :data:`~recdim.modules.soft_threshold.GATE_INVERSES`.

        Returns:
            Tensor: int16 [r, k].
        """
        n = len(self)
        # |float32 estimate - float64 key| for keys within a step of the offsets, in steps: the float32 inverse
        # is within a few ulps of |g^{-1}(|V|)| <= 104 (+inf aside) and the difference with s rounds to half an
        # ulp of the key (8x margins); with the offsets' distance from even spacing and the float32 rounding of
        # the position
        bound = 2.0**-20 * (104.0 + self._largest + 4.0) + self._deviation
        slack = bound / self.step + 2.0**-20 * (n + 1) if self.step > 0 else math.inf
        if not slack < 0.25 or not values.numel():  # no spacing to screen against: every key exactly
            return self.bins(survival_keys(values, s, gate))
        x = estimate_survival_keys(values, s, gate).sub_(float(self.offsets[0])).mul_(1.0 / self.step)
        x.clamp_(-0.5, n - 0.5)  # beyond the offsets: bin 0 or n, half a step from any decision
        out = torch.ceil(x)
        sure = x.sub_(out).add_(0.5).abs_().le(0.5 - slack)  # the position is far from an integer
        bins = out.to(torch.int16)
        unsure = sure.view(-1).logical_not_().nonzero().squeeze(1)  # NaN positions land here too
        if unsure.numel():
            keys = survival_keys(torch.take(values, unsure), torch.take(s.expand_as(values), unsure), gate)
            bins.view(-1).index_copy_(0, unsure, self.bins(keys))
        return bins


class StoredKeys:
    """Every value's survival key, kept (float64, 8 bytes a value): a count compares them all with the
    offset, so any offset is answered. For tables small enough that one comparison over all values costs
    less than binning the touched ones.

    Args:
        keys: [n, k] float64.
    """

    def __init__(self, keys: torch.Tensor) -> None:
        self.keys = keys

    def covers(self, offset: float) -> bool:
        return True

    def replace(self, index: torch.Tensor, keys: torch.Tensor) -> None:
        """Rows ``index`` now have ``keys`` ([len(index), k])."""
        self.keys.index_copy_(0, index, keys)

    def count(self, offset: float) -> int:
        return int(torch.count_nonzero(self.keys > offset))


class BinnedKeys:
    """Every value's bin among the coming offsets (int16, 2 bytes a value) and how many values each bin
    holds: a count adds up the bins above the offset, whatever the number of values; only the grid's
    offsets, in order, are answered (:meth:`covers`).

    Args:
        bins: [n, k] int16, ``grid.bins`` of the values' keys.
        grid: the offsets of the coming counts.
    """

    def __init__(self, bins: torch.Tensor, grid: OffsetGrid) -> None:
        self.grid = grid
        self.at = 0
        self.bins = bins
        self.hist = torch.bincount(bins.view(-1).to(torch.int64), minlength=len(grid) + 1).cpu()

    def covers(self, offset: float) -> bool:
        at = self.grid.index(offset, self.at)
        if at is None:
            return False
        self.at = at
        return True

    def replace(self, index: torch.Tensor, keys: torch.Tensor) -> None:
        """Rows ``index`` now have ``keys`` ([len(index), k] float64)."""
        self.replace_bins(index, self.grid.bins(keys))

    def replace_bins(self, index: torch.Tensor, new: torch.Tensor) -> None:
        """Rows ``index`` (distinct) now have bins ``new`` ([len(index), k] int16)."""
        size = len(self.grid) + 1
        old = self.bins.index_select(0, index)
        self.bins.index_copy_(0, index, new)
        self.hist += torch.bincount(new.view(-1), minlength=size).cpu()
        self.hist -= torch.bincount(old.view(-1), minlength=size).cpu()

    def count(self, offset: float) -> int:
        at = self.grid.index(offset, self.at)
        assert at is not None, "count() at an offset the grid does not cover"
        return int(self.hist[at + 1 :].sum())


class FrozenKeys:
    """Every local value's survival key at one moment, for counts at many offsets while no row changes (a
    snapshot's bisection): one pass through the gate's inverse, then one comparison per value a count,
    instead of a pass through the gate per count (:func:`~recdim.search.pep_tables.count_nonzeros`). The
    counts are the ones a full count makes. float64, 8 bytes a value.

    Args:
        provider: the (possibly sharded) provider, :attr:`ThresholdEmbeddingProvider.keyed_survival`.

    Example::

        keys = FrozenKeys.build(provider)         # None when the shards hold too many values
        nnz = keys.count_at(float(provider.threshold_offset)) if keys else count_nonzeros(provider)[0]
    """

    def __init__(self, provider: ThresholdEmbeddingProvider) -> None:
        if not provider.keyed_survival:
            raise ValueError("FrozenKeys needs thresholds in the table and a gate with a known inverse")
        self.provider = provider
        self.keys: List[torch.Tensor] = []
        with torch.no_grad():
            for feature, _, local, _, cols in table_pieces(provider):
                step = max(1, CHUNK_VALUES // max(1, local.size(1)))
                for a in range(0, local.size(0), step):
                    values, s, _ = provider.thresholds.split_piece(feature, local[a : a + step], cols)
                    self.keys.append(provider.survival_keys(values, s))

    @classmethod
    def build(cls, provider: ThresholdEmbeddingProvider, limit: int = FROZEN_KEY_LIMIT) -> Optional["FrozenKeys"]:
        """The keys when the provider has survival keys and every rank's shards hold at most ``limit``
        values, else None; the same answer on every rank (collective when world > 1)."""
        local = sum(piece[2].numel() for piece in table_pieces(provider)) // provider.thresholds.columns_per_value
        ok = provider.keyed_survival and local <= limit
        if rank_and_world()[1] > 1:
            flag = torch.tensor([int(ok)], device=provider.threshold_offset.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            ok = bool(flag.item())
        return cls(provider) if ok else None

    @torch.no_grad()
    def count_at(self, offset: float) -> int:
        """Surviving values at ``offset`` (float32-representable) over every rank (collective)."""
        nnz = torch.zeros((), dtype=torch.int64, device=self.provider.threshold_offset.device)
        for keys in self.keys:
            nnz += torch.count_nonzero(keys > offset).to(nnz.device)
        if rank_and_world()[1] > 1:
            dist.all_reduce(nnz)
        return int(nnz)


@dataclass
class _Group:
    """Local shards of one value width, counted together: their keys stacked as [sum r, k]."""

    pieces: List[Tuple[int, str, torch.Tensor, Tuple[int, int], Tuple[int, int]]]
    starts: List[int]
    index: Union[StoredKeys, BinnedKeys]
    versions: List[int]


class KeptCounter:
    """Exact survivor count of a PEP provider with thresholds in its tables, updated from the touched rows.

    Call :meth:`count` after every step that should be counted (on every rank: it is collective); rows
    touched since the previous call are taken from the provider (:meth:`ThresholdEmbeddingProvider.take_touched`,
    which this counter switches on). Needs :attr:`ThresholdEmbeddingProvider.keyed_survival` and
    :func:`fused_sparse_tables`. Shards of up to ``stored_limit`` values together keep their keys
    (:class:`StoredKeys`, 8 bytes a value), larger ones their bins (:class:`BinnedKeys`, 2 bytes a value).

    Args:
        provider: the (possibly sharded) provider.
        horizon: offsets held ahead by :class:`BinnedKeys` (counts between rebuilds), at most 32766.
        stored_limit: the most values whose keys are kept.

    Example::

        counter = KeptCounter(provider)  # a sharded provider, fused row-wise Adagrad
        for step in range(1, 1001):
            trainer.train_step(next(batches))
            ramp.after_step(provider, step)
            offset = float(provider.threshold_offset)
            nnz, total = counter.count(offset, upcoming_offsets([ramp], step, 1, offset))
    """

    def __init__(self, provider: ThresholdEmbeddingProvider, horizon: int = 4096, stored_limit: int = 1 << 20) -> None:
        if not provider.keyed_survival:
            raise ValueError("KeptCounter needs thresholds in the table and a gate with a known inverse")
        if not 1 <= horizon <= 32766:
            raise ValueError(f"horizon must be in [1, 32766], got {horizon}")
        self.provider = provider
        self.horizon = int(horizon)
        self.stored_limit = int(stored_limit)
        self.rebuilds = 0
        self._groups: List[_Group] = []
        self._rows = torch.empty(0)
        provider.track_touched(True)

    @torch.no_grad()
    def count(self, offset: float, upcoming: Optional[Upcoming] = None) -> Tuple[int, int]:
        """``(surviving values, all values)`` at ``offset`` (the provider's current one), identical on all
        ranks.

        Args:
            offset: the offset in force (``float(provider.threshold_offset)``).
            upcoming: ``n -> the offsets of the next n calls`` (only asked for on a rebuild of
                :class:`BinnedKeys`); without it each change of the offset rebuilds those.
        """
        touched = self._gather_touched(self.provider.take_touched())
        if not self._groups or not self._unchanged() or not all(g.index.covers(offset) for g in self._groups):
            self._rebuild(offset, upcoming)
        else:
            for group in self._groups:
                self._update(group, touched)
        nnz = torch.tensor(
            sum(g.index.count(offset) for g in self._groups), device=self.provider.threshold_offset.device
        )
        if rank_and_world()[1] > 1:
            dist.all_reduce(nnz)
        return int(nnz), self.provider.embedding_params()

    def answers_any_offset(self) -> bool:
        """Whether :meth:`count_at` can answer: every shard keeps its keys (:class:`StoredKeys`), none was
        written since it was keyed, and no training step has touched a row since the last :meth:`count`.
        The same answer on every rank (collective when world > 1)."""
        ok = (
            bool(self._groups)
            and self._unchanged()
            and all(isinstance(g.index, StoredKeys) for g in self._groups)
            and not self.provider.has_touched()
        )
        if rank_and_world()[1] > 1:
            flag = torch.tensor([int(ok)], device=self.provider.threshold_offset.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            ok = bool(flag.item())
        return ok

    @torch.no_grad()
    def count_at(self, offset: float) -> int:
        """Surviving values at any ``offset`` (float32-representable) from the kept keys, identical on all
        ranks: the count :func:`~recdim.search.pep_tables.count_nonzeros` makes at that offset, from one
        comparison per value instead of a pass through the gate. Only while :meth:`answers_any_offset`."""
        nnz = torch.tensor(
            sum(g.index.count(offset) for g in self._groups), device=self.provider.threshold_offset.device
        )
        if rank_and_world()[1] > 1:
            dist.all_reduce(nnz)
        return int(nnz)

    def _unchanged(self) -> bool:
        """No shard was written since it was keyed other than by the fused optimizer (which leaves
        ``_version`` alone; ``copy_``, ``load_state_dict`` and friends bump it)."""
        return all(piece[2]._version == version for g in self._groups for piece, version in zip(g.pieces, g.versions))

    def _keys(self, rows: torch.Tensor, cols: Tuple[int, int]) -> torch.Tensor:
        values, s, _ = self.provider.thresholds.split_piece(0, rows, cols)  # table-resident: any feature alike
        return self.provider.survival_keys(values, s)

    def _bins(self, rows: torch.Tensor, cols: Tuple[int, int], grid: OffsetGrid) -> torch.Tensor:
        values, s, _ = self.provider.thresholds.split_piece(0, rows, cols)
        return grid.screened_bins(values, s, self.provider.gate)

    def _rebuild(self, offset: float, upcoming: Optional[Upcoming]) -> None:
        by_width: Dict[int, List[Tuple[int, str, torch.Tensor, Tuple[int, int], Tuple[int, int]]]] = {}
        for piece in table_pieces(self.provider):
            by_width.setdefault(piece[2].size(1), []).append(piece)
        grid: Optional[OffsetGrid] = None
        self._groups = []
        for pieces in by_width.values():
            starts = [0]
            for p in pieces:
                starts.append(starts[-1] + p[2].size(0))
            step = max(1, CHUNK_VALUES // pieces[0][2].size(1))
            chunks = [
                (local[a : a + step], cols) for _, _, local, _, cols in pieces for a in range(0, local.size(0), step)
            ]
            index: Union[StoredKeys, BinnedKeys]
            if starts[-1] * pieces[0][2].size(1) // self.provider.thresholds.columns_per_value <= self.stored_limit:
                index = StoredKeys(torch.cat([self._keys(rows, cols) for rows, cols in chunks]))
            else:
                if grid is None:
                    ahead = list(upcoming(self.horizon - 1)) if upcoming is not None and self.horizon > 1 else []
                    grid = OffsetGrid([offset, *ahead])
                index = BinnedKeys(torch.cat([self._bins(rows, cols, grid) for rows, cols in chunks]), grid)
            self._groups.append(_Group(pieces, starts, index, [p[2]._version for p in pieces]))
        self.rebuilds += 1

    def _update(self, group: _Group, touched: Dict[str, torch.Tensor]) -> None:
        """Re-keys the touched rows of one group."""
        parts, where = [], []
        for (feature, name, local, (r0, r1), _), start in zip(group.pieces, group.starts):
            rows = touched.get(name)
            if rows is None or rows.numel() == 0:
                continue
            rows = rows.to(local.device)
            if r0 != 0 or r1 != self.provider.tables[feature].num_embeddings:  # a row-wise shard
                rows = rows[(rows >= r0) & (rows < r1)] - r0
            parts.append((local, rows))
            where.append(rows + start)
        if not parts:
            return
        index = torch.cat(where) if len(where) > 1 else where[0]
        width = parts[0][0].size(1)
        if self._rows.numel() < index.numel() * width or self._rows.device != parts[0][0].device:
            self._rows = parts[0][0].new_empty(index.numel() * width)  # kept: large buffers cost page faults
        gathered = self._rows[: index.numel() * width].view(index.numel(), width)
        at = 0
        for local, rows in parts:
            torch.index_select(local, 0, rows, out=gathered[at : at + rows.numel()])
            at += rows.numel()
        step = max(1, CHUNK_VALUES // width)  # a chunk's temporaries stay in cache
        cols = group.pieces[0][4]
        for a in range(0, index.numel(), step):
            rows = gathered[a : a + step]
            if isinstance(group.index, BinnedKeys):
                group.index.replace_bins(index[a : a + step], self._bins(rows, cols, group.index.grid))
            else:
                group.index.replace(index[a : a + step], self._keys(rows, cols))

    @staticmethod
    def _gather_touched(mine: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The union over ranks of the rows each rank's batches touched (collective when world > 1)."""
        if rank_and_world()[1] == 1:
            return mine
        everyone: List[Dict[str, torch.Tensor]] = [{} for _ in range(rank_and_world()[1])]
        dist.all_gather_object(everyone, {k: v.cpu() for k, v in mine.items()})
        out: Dict[str, List[torch.Tensor]] = {}
        for part in everyone:
            for k, v in part.items():
                out.setdefault(k, []).append(v)
        return {k: torch.unique(torch.cat(v)) for k, v in out.items()}
