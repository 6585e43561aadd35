"""A row's set of kept columns as its rank among all sets of that size (the combinatorial number system).

A row keeping k of K columns ``c_0 < ... < c_{k-1}`` has rank ``sum_j C(c_j, j + 1)`` in ``[0, C(K, k))``;
stored in ``ceil(log2 C(K, k))`` bits it is the shortest fixed code for a k-subset: 4 bits where a bit
mask spends 16 for one column of K = 16, 10.8 bits for four. Ranks of all rows are packed one after
another, LSB first (row r's bits start where row r - 1's end). Exact for K <= 64 (int64 ranks).

Example::

    mask = torch.tensor([[True, False, True, False]])
    packed = pack_ranks(mask)                                     # 3 bits: C(4, 2) = 6 sets
    unpack_ranks(packed, torch.tensor([2]), K=4)                  # tensor([[True, False, True, False]])
"""

from __future__ import annotations

from functools import lru_cache

import torch

from recdim.layout.bitpack import pack_bools, packed_size, unpack_bools

MAX_K = 64


@lru_cache(maxsize=None)
def binomials(K: int) -> torch.Tensor:
    """[K + 1, K + 2] int64 ``C(n, m)`` for n <= K, m <= K + 1."""
    if not 1 <= K <= MAX_K:
        raise ValueError(f"subset ranks need 1 <= K <= {MAX_K}, got {K}")
    out = torch.zeros(K + 1, K + 2, dtype=torch.int64)
    out[:, 0] = 1
    for n in range(1, K + 1):
        out[n, 1:] = out[n - 1, 1:] + out[n - 1, :-1]
    return out


def rank_bits(lengths: torch.Tensor, K: int) -> torch.Tensor:
    """[R] bits per row: ``ceil(log2 C(K, k))`` (0 when k is 0 or K)."""
    count = binomials(K)[K].index_select(0, lengths.to(torch.int64))
    return torch.where(count > 1, 64 - _clz64(count - 1), 0)


def _clz64(x: torch.Tensor) -> torch.Tensor:
    """Leading zeros of positive int64 values."""
    bits = torch.zeros_like(x)
    for shift in (32, 16, 8, 4, 2, 1):
        big = (x >> shift) > 0
        bits = bits + torch.where(big, shift, 0)
        x = torch.where(big, x >> shift, x)
    return 63 - bits


def packed_rank_bytes(lengths: torch.Tensor, K: int) -> int:
    """Bytes :func:`pack_ranks` spends on rows of these kept counts."""
    return packed_size(int(rank_bits(lengths, K).sum()), 1)


def pack_ranks(row_mask: torch.Tensor) -> torch.Tensor:
    """[R, K] bool -> uint8: every row's subset rank in ``rank_bits`` bits, rows one after another."""
    R, K = row_mask.shape
    C = binomials(K)
    lengths = row_mask.sum(dim=1)
    rows, cols = torch.nonzero(row_mask, as_tuple=True)  # row-major: each row's columns ascending
    first = torch.cumsum(lengths, 0) - lengths
    j = torch.arange(rows.numel()) - first.index_select(0, rows)  # index of each kept column within its row
    ranks = torch.zeros(R, dtype=torch.int64).index_add_(0, rows, C[cols, j + 1])
    width = rank_bits(lengths, K)
    return pack_bools(_spread(ranks, width))


def _spread(ranks: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    total = int(width.sum())
    row = torch.repeat_interleave(torch.arange(ranks.numel()), width, output_size=total)
    start = torch.cumsum(width, 0) - width
    bit = torch.arange(total) - start.index_select(0, row)
    return ((ranks.index_select(0, row) >> bit) & 1).to(torch.bool)


def unpack_ranks(packed: torch.Tensor, lengths: torch.Tensor, K: int) -> torch.Tensor:
    """The [R, K] bool row masks of :func:`pack_ranks` output, given each row's kept count.

    Raises:
        ValueError: the wrong number of bytes, set padding bits, or a rank outside ``[0, C(K, k))``.
    """
    C = binomials(K)
    lengths = lengths.to(torch.int64)
    R = lengths.numel()
    width = rank_bits(lengths, K)
    total = int(width.sum())
    flags = unpack_bools(packed, total)
    row = torch.repeat_interleave(torch.arange(R), width, output_size=total)
    start = torch.cumsum(width, 0) - width
    bit = torch.arange(total) - start.index_select(0, row)
    ranks = torch.zeros(R, dtype=torch.int64).index_add_(0, row, flags.to(torch.int64) << bit)
    if bool((ranks >= C[K].index_select(0, lengths)).any()):
        raise ValueError(f"subset ranks: a rank is not below C({K}, k) for its row")
    # Columns from K - 1 down: column c is kept when C(c, m) <= rank, m the columns still to place.
    out = torch.zeros(R, K, dtype=torch.bool)
    left, m = ranks.clone(), lengths.clone()
    for c in range(K - 1, -1, -1):
        cost = C[c].index_select(0, m)
        take = (m > 0) & (cost <= left)
        out[:, c] = take
        left = torch.where(take, left - cost, left)
        m = m - take.to(torch.int64)
    return out
