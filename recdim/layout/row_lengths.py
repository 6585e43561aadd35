"""Per-row small integers (kept widths) stored packed or as runs, whichever is smaller.

Tables whose ids are ordered by frequency keep the same width over long id ranges (frequency blocks,
smooth kept-dims profiles), so a run-length code costs a few bytes per table where a packed one costs
``ceil(log2 K)`` bits per row. Two encodings of R values in ``[0, 2**bits)``:

- ``packed``: ``lengths.packed`` uint8, every value in ``bits`` bits (:func:`~recdim.layout.bitpack.pack_uint`);
- ``runs``: ``lengths.run_ends`` int32 [runs] (exclusive end row of each run of equal values, ascending,
  the last equal to R) and ``lengths.run_values`` uint8 (each run's value in ``bits`` bits).

Example::

    kind, tensors = encode_lengths(torch.tensor([3, 3, 3, 1, 1]), bits=2)   # "runs"
    decode_lengths(kind, tensors, rows=5, bits=2, runs=2)                    # tensor([3, 3, 3, 1, 1])
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from recdim.layout.bitpack import pack_uint, packed_size, unpack_uint

LENGTH_KINDS = ("packed", "runs")


def tensor_specs(kind: str, rows: int, bits: int, runs: int) -> Dict[str, Tuple[torch.dtype, List[int]]]:
    """``{name: (dtype, shape)}`` an encoding stores.

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "packed":
        return {"lengths.packed": (torch.uint8, [packed_size(rows, bits)])}
    if kind == "runs":
        return {
            "lengths.run_ends": (torch.int32, [runs]),
            "lengths.run_values": (torch.uint8, [packed_size(runs, bits)]),
        }
    raise ValueError(f"lengths kind {kind!r}; expected one of {', '.join(LENGTH_KINDS)}")


def encode_lengths(values: torch.Tensor, bits: int) -> Tuple[str, Dict[str, torch.Tensor]]:
    """The smaller encoding of ``values`` ([R] ints in ``[0, 2**bits)``).

    Returns:
        ``(kind, tensors)``; ties go to ``packed``.
    """
    values = values.to(torch.int64).reshape(-1)
    R = values.numel()
    change = torch.ones(R, dtype=torch.bool)
    if R:
        change[1:] = values[1:] != values[:-1]
    starts = torch.nonzero(change).squeeze(1)
    ends = torch.cat([starts[1:], torch.tensor([R])]) if R else starts
    runs = int(starts.numel())
    if 4 * runs + packed_size(runs, bits) < packed_size(R, bits):
        return "runs", {
            "lengths.run_ends": ends.to(torch.int32),
            "lengths.run_values": pack_uint(values.index_select(0, starts), bits),
        }
    return "packed", {"lengths.packed": pack_uint(values, bits)}


def decode_lengths(kind: str, tensors: Dict[str, torch.Tensor], rows: int, bits: int, runs: int = 0) -> torch.Tensor:
    """[rows] int64 values (the inverse of :func:`encode_lengths`).

    Raises:
        ValueError: run ends that are not strictly ascending from above 0 to ``rows``, or set padding bits.
    """
    if kind == "packed":
        return unpack_uint(tensors["lengths.packed"], rows, bits)
    tensor_specs(kind, rows, bits, runs)
    ends = tensors["lengths.run_ends"].to(torch.int64)
    run_values = unpack_uint(tensors["lengths.run_values"], runs, bits)
    if runs == 0:
        if rows:
            raise ValueError(f"lengths.run_ends: no runs for {rows} rows")
        return torch.zeros(0, dtype=torch.int64)
    if int(ends[-1]) != rows or int(ends[0]) <= 0 or bool((ends[1:] <= ends[:-1]).any()):
        raise ValueError(f"lengths.run_ends: not strictly ascending from above 0 to {rows}")
    sizes = torch.diff(ends, prepend=torch.zeros(1, dtype=torch.int64))
    return torch.repeat_interleave(run_values, sizes, output_size=rows)
