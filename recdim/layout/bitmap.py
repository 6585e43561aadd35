"""A bitmap over N ids with rank and select: the kept rows of a table at one bit per id.

``rank(i)`` is the number of set bits before id ``i`` (so a kept id's rank is its index among the kept
rows, the row its values sit at in a jagged store), ``select(r)`` the id of the r-th set bit (its
inverse on kept ids). Both are vectorised over a tensor of ids / ranks and run on a per-byte prefix count
built once (N / 8 int64 entries, not stored).

Example::

    bm = RankBitmap.from_bools(torch.tensor([True, False, False, True, True]))
    bm.count                          # 3
    bm.rank(torch.tensor([0, 3, 4]))  # tensor([0, 1, 2])
    bm.select(torch.tensor([2]))      # tensor([4])
    bm.nbytes                         # 1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from recdim.layout.bitpack import pack_bools, packed_size, unpack_bools

_POPCOUNT = torch.tensor([bin(b).count("1") for b in range(256)], dtype=torch.int64)


@dataclass(frozen=True, eq=False)
class RankBitmap:
    """N flags packed eight to a byte (:func:`~recdim.layout.bitpack.pack_bools` layout).

    Args:
        bits: [ceil(N / 8)] uint8.
        length: N.

    Raises:
        ValueError: ``bits`` does not hold exactly N flags (wrong size, or padding bits set).
    """

    bits: torch.Tensor
    length: int
    _flags: torch.Tensor = field(init=False, repr=False)
    _before: Optional[torch.Tensor] = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_flags", unpack_bools(self.bits, self.length))

    @classmethod
    def from_bools(cls, flags: torch.Tensor) -> "RankBitmap":
        """The bitmap of ``flags`` ([N] bool)."""
        return cls(pack_bools(flags), int(flags.numel()))

    @property
    def nbytes(self) -> int:
        """Stored bytes: ``ceil(N / 8)``."""
        return packed_size(self.length, 1)

    @property
    def count(self) -> int:
        """Set bits."""
        return int(self._flags.sum())

    def bools(self) -> torch.Tensor:
        """[N] bool."""
        return self._flags

    def set_ids(self) -> torch.Tensor:
        """[count] int64 ids of the set bits, ascending (``select`` of every rank)."""
        return torch.nonzero(self._flags).squeeze(1)

    def _prefix(self) -> torch.Tensor:
        if self._before is None:
            per_byte = _POPCOUNT.index_select(0, self.bits.to(torch.int64))
            before = torch.cat([torch.zeros(1, dtype=torch.int64), per_byte.cumsum(0)])
            object.__setattr__(self, "_before", before)
        return self._before  # type: ignore[return-value]

    def rank(self, ids: torch.Tensor) -> torch.Tensor:
        """Set bits strictly before each id.

        Args:
            ids: [L] int64 in ``[0, N]``.

        Returns:
            Tensor: [L] int64; for a set id, its index among the set ids.
        """
        ids = ids.to(torch.int64)
        byte, bit = ids >> 3, ids & 7
        if self.bits.numel() == 0:
            return torch.zeros_like(ids)
        inside = self.bits.to(torch.int64).index_select(0, byte.clamp(max=self.bits.numel() - 1))
        low = inside & ((1 << bit) - 1)
        return self._prefix().index_select(0, byte) + _POPCOUNT.index_select(0, low)

    def select(self, ranks: torch.Tensor) -> torch.Tensor:
        """The id of the r-th set bit.

        Args:
            ranks: [L] int64 in ``[0, count)``.

        Returns:
            Tensor: [L] int64 ids.
        """
        ranks = ranks.to(torch.int64)
        before = self._prefix()
        byte = torch.searchsorted(before, ranks, right=True) - 1  # the byte holding set bit number r
        within = ranks - before.index_select(0, byte)
        value = self.bits.to(torch.int64).index_select(0, byte)
        bits = (value.unsqueeze(1) >> torch.arange(8)) & 1
        upto = bits.cumsum(dim=1)  # set bits of the byte up to and including each position
        pos = (upto <= within.unsqueeze(1)).sum(dim=1)
        return byte * 8 + pos
