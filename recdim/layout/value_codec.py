"""How a table's kept values are stored: float32, float16, or int8 row-wise (a scale and a bias per row).

The values are jagged: one flat [nnz] array holding each kept row's kept values one row after another,
``row_lengths[r]`` of them for row r. Codecs:

- ``float32``: the values as they are (exact).
- ``float16``: rounded to half precision (relative error <= 2**-11 for normal values).
- ``int8``: per row, ``v ≈ q * scale + bias`` with ``q`` in ``[0, 255]`` (stored as uint8) and ``scale`` /
  ``bias`` float16 (FBGEMM's row-wise int8 convention): ``bias`` is the row minimum rounded down, ``scale``
  its range over 255 rounded up, so the grid covers the row and every value is off by at most
  ``scale / 2`` (plus float32 rounding). A row of equal values is exact when its value is a float16.

float16 and int8 refuse values beyond float16's range (about ±65504) with an error naming the table.

Example::

    stored = encode_values(values, row_lengths, "int8", where="t_user")   # {"values", "scale", "bias"}
    back = decode_values(stored, row_lengths, "int8")                      # [nnz] float32
"""

from __future__ import annotations

from typing import Dict, List, Literal, Mapping, Tuple

import torch

ValueDtype = Literal["float32", "float16", "int8"]
VALUE_DTYPES: Tuple[str, ...] = ("float32", "float16", "int8")
_HALF_MAX = float(torch.finfo(torch.float16).max)


def tensor_specs(value_dtype: str, nnz: int, rows: int) -> Dict[str, Tuple[torch.dtype, List[int]]]:
    """``{tensor name: (dtype, shape)}`` a codec stores for ``nnz`` values in ``rows`` rows.

    Raises:
        ValueError: an unknown codec.
    """
    if value_dtype == "float32":
        return {"values": (torch.float32, [nnz])}
    if value_dtype == "float16":
        return {"values": (torch.float16, [nnz])}
    if value_dtype == "int8":
        return {"values": (torch.uint8, [nnz]), "scale": (torch.float16, [rows]), "bias": (torch.float16, [rows])}
    raise ValueError(f"unknown value dtype {value_dtype!r}; expected one of {', '.join(VALUE_DTYPES)}")


def _half_toward(x: torch.Tensor, down: bool) -> torch.Tensor:
    """float32 -> the nearest float16 at or below (``down``) / at or above ``x``."""
    h = x.to(torch.float16)
    off = h.float() > x if down else h.float() < x
    return torch.where(off, torch.nextafter(h, torch.full_like(h, float("-inf") if down else float("inf"))), h)


def _row_ids(row_lengths: torch.Tensor, nnz: int) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(row_lengths.numel()), row_lengths.to(torch.int64), output_size=nnz)


def encode_values(
    values: torch.Tensor, row_lengths: torch.Tensor, value_dtype: str, where: str = "values"
) -> Dict[str, torch.Tensor]:
    """Stores jagged values with a codec.

    Args:
        values: [nnz] float.
        row_lengths: [R] int, summing to nnz.
        value_dtype: ``"float32"``, ``"float16"`` or ``"int8"``.
        where: names the table in errors.

    Returns:
        ``{name: tensor}`` as :func:`tensor_specs` describes.

    Raises:
        ValueError: an unknown codec, or values beyond float16's range for ``float16`` / ``int8``.
    """
    values = values.detach().to(torch.float32).reshape(-1).cpu()
    tensor_specs(value_dtype, values.numel(), row_lengths.numel())  # validates the name
    if value_dtype == "float32":
        return {"values": values.contiguous()}
    if values.numel() and float(values.abs().max()) > _HALF_MAX:
        raise ValueError(
            f"{where}: values up to {float(values.abs().max()):.4g} do not fit {value_dtype} storage "
            f"(float16 holds ±{_HALF_MAX:g}); export float32"
        )
    if value_dtype == "float16":
        return {"values": values.to(torch.float16)}
    R, nnz = row_lengths.numel(), values.numel()
    rows = _row_ids(row_lengths, nnz)
    lo = torch.full((R,), float("inf")).scatter_reduce(0, rows, values, reduce="amin")
    hi = torch.full((R,), float("-inf")).scatter_reduce(0, rows, values, reduce="amax")
    empty = row_lengths == 0
    lo, hi = torch.where(empty, 0.0, lo), torch.where(empty, 0.0, hi)
    bias = _half_toward(lo, down=True)
    scale = _half_toward((hi - bias.float()) / 255.0, down=False)
    # Rounding the scale up may still leave bias + 255 * scale a hair below the maximum in float32.
    short = bias.float() + 255.0 * scale.float() < hi
    scale = torch.where(short, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)
    s, b = scale.float().index_select(0, rows), bias.float().index_select(0, rows)
    q = torch.where(s > 0, torch.round((values - b) / torch.where(s > 0, s, 1.0)), 0.0).clamp(0, 255)
    return {"values": q.to(torch.uint8), "scale": scale, "bias": bias}


def decode_values(stored: Mapping[str, torch.Tensor], row_lengths: torch.Tensor, value_dtype: str) -> torch.Tensor:
    """The float32 values a codec stored (the inverse of :func:`encode_values`, exact for float32).

    Args:
        stored: the tensors :func:`encode_values` returned.
        row_lengths: [R] int.
        value_dtype: the codec they were stored with.

    Returns:
        Tensor: [nnz] float32.
    """
    if value_dtype in ("float32", "float16"):
        return stored["values"].to(torch.float32)
    if value_dtype != "int8":
        tensor_specs(value_dtype, 0, 0)
    q = stored["values"]
    rows = _row_ids(row_lengths, q.numel())
    return q.to(torch.float32) * stored["scale"].float().index_select(0, rows) + stored["bias"].float().index_select(
        0, rows
    )
