"""Vectorised parsing and checking of raw text values; problems become bad rows with a reason.

Conventions: an empty cell is a missing value; text that is not a number, or a number that is NaN or
infinite, in a numeric column is a malformed row (never silently turned into a missing value).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recdim.data.readers.base import RowErrors, TextColumn
from recdim.data.schema import LabelKind


def arrow_text(values: TextColumn) -> pa.Array:
    """The Arrow string array of a text column (pandas string Series, object array of ``str``, Arrow).

    Example::

        arrow_text(pd.Series(["1", ""], dtype="str"))
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, pd.Series) and values.dtype != object:
        return arrow_text(pa.array(values))
    return pa.array(np.asarray(values, dtype=object), type=pa.large_string(), from_pandas=True)


def _to_float(text: pa.Array, empty: np.ndarray) -> np.ndarray:
    """float64 values of numeric text (NaN where empty or unparsable)."""
    cleaned = pc.if_else(pa.array(empty), pa.scalar(None, type=text.type), text)
    try:
        return pc.cast(cleaned, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # some cell is not plain numeric text: let pandas parse cell by cell (unparsable -> NaN)
        obj = text.to_numpy(zero_copy_only=False)
        return np.array(pd.to_numeric(pd.Series(obj, dtype=object), errors="coerce"), dtype=np.float64)


def parse_numbers(
    values: TextColumn,
    column: str,
    errors: RowErrors,
    *,
    integer: bool = False,
    required: bool = False,
    low: Optional[float] = None,
    high: Optional[float] = None,
) -> np.ndarray:
    """Parses a column of numeric text, flagging malformed rows in ``errors``.

    Args:
        values: text column [N] (pandas string Series, object array of ``str`` or Arrow strings).
        column: column name used in error reasons.
        errors: where malformed rows are flagged.
        integer: values must be whole numbers.
        required: an empty cell is malformed (otherwise it is missing: NaN).
        low: smallest allowed value (inclusive), if any.
        high: largest allowed value (inclusive), if any.

    Returns:
        float64 [N]: the numbers, NaN where missing or malformed.

    Example::

        ids = parse_numbers(frame["user_id"], "user_id", errors, integer=True, required=True, low=1)
    """
    text = arrow_text(values)
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), True).to_numpy(zero_copy_only=False)
    numbers = _to_float(text, empty)
    what = "an integer" if integer else "a finite number"
    errors.flag(~empty & ~np.isfinite(numbers), column, f"expected {what}", text)
    if required:
        errors.flag(empty, column, "missing value")
    finite = np.isfinite(numbers)
    if integer:
        errors.flag(finite & (np.floor(numbers) != numbers), column, "expected an integer", text)
    if low is not None:
        errors.flag(finite & (numbers < low), column, f"out of range (must be >= {low:g})", text)
    if high is not None:
        errors.flag(finite & (numbers > high), column, f"out of range (must be <= {high:g})", text)
    numbers[~finite] = np.nan
    return numbers


def parse_label(values: TextColumn, column: str, kind: LabelKind, errors: RowErrors) -> np.ndarray:
    """Parses a label column: a finite number, and 0 or 1 for binary labels.

    Args:
        values: text column [N].
        column: column name used in error reasons.
        kind: label kind.
        errors: where malformed rows are flagged.

    Returns:
        float64 [N] (NaN on malformed rows).

    Example::

        label = parse_label(frame["label"], "label", LabelKind.BINARY, errors)
    """
    label = parse_numbers(values, column, errors, required=True)
    if kind == LabelKind.BINARY:
        not_binary = np.isfinite(label) & (label != 0) & (label != 1)
        errors.flag(not_binary, column, "expected 0 or 1", arrow_text(values))
    return label


def check_numbers(numbers: np.ndarray, missing: np.ndarray, column: str, errors: RowErrors) -> np.ndarray:
    """Flags NaN / infinite values of an already numeric column (e.g. from Parquet) as malformed.

    Args:
        numbers: float64 [N].
        missing: bool [N], cells that are absent (Parquet nulls); they become NaN, not errors.
        column: column name used in error reasons.
        errors: where malformed rows are flagged.

    Returns:
        float64 [N]: the numbers, NaN where missing or malformed.

    Example::

        x = check_numbers(values, nulls, "x", errors)
    """
    out = np.array(numbers, dtype=np.float64, copy=True)
    errors.flag(~missing & ~np.isfinite(out), column, "expected a finite number", out)
    out[missing | ~np.isfinite(out)] = np.nan
    return out


def bag_split(values: TextColumn, sep: str) -> np.ndarray:
    """Splits multi-categorical cells ``"a|b|c"`` into tuples, dropping empty parts (null -> empty bag).

    Args:
        values: text column [N].
        sep: separator inside a cell.

    Returns:
        object array [N] of tuples of non-empty ``str``.

    Example::

        bag_split(np.array(["a|b", ""], dtype=object), "|")  # [("a", "b"), ()]
    """
    cells = arrow_text(values).to_pylist()
    out = np.empty(len(cells), dtype=object)
    out[:] = [tuple(p for p in v.split(sep) if p) if v else () for v in cells]
    return out
