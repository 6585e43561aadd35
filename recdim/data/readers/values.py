"""Vectorised parsing and checking of raw text values; problems become bad rows with a reason.

Conventions: an empty cell is a missing value; text that is not a number, or a number that is NaN or
infinite, in a numeric column is a malformed row (never silently turned into a missing value).
"""

from __future__ import annotations

from typing import Mapping, Optional

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


def flag_empty(values: TextColumn, column: str, errors: RowErrors) -> np.ndarray:
    """Flags empty (or all-whitespace) cells of a required text column as malformed.

    Args:
        values: text column [N].
        column: column name used in error reasons.
        errors: where malformed rows are flagged.

    Returns:
        bool [N], the empty cells.

    Example::

        flag_empty(frame["user_id"], "user_id", errors)
    """
    text = arrow_text(values)
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), True).to_numpy(zero_copy_only=False)
    errors.flag(empty, column, "missing value")
    return empty


def check_digits(values: TextColumn, column: str, errors: RowErrors) -> None:
    """Flags cells that are not a non-empty run of ASCII digits (a non-negative integer id of any size).

    Unlike :func:`parse_numbers` this never converts, so 64-bit ids (hashes) are checked exactly.

    Args:
        values: text column [N].
        column: column name used in error reasons.
        errors: where malformed rows are flagged.

    Example::

        check_digits(frame["AdID"], "AdID", errors)  # "20157098" ok; "", "-1", "1e5" malformed
    """
    text = arrow_text(values)
    digits = pc.fill_null(pc.ascii_is_decimal(text), False).to_numpy(zero_copy_only=False)
    errors.flag(~digits, column, "expected a non-negative integer id", text)


_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def parse_iso_times(values: TextColumn, column: str, errors: RowErrors, *, numbers: bool = False) -> np.ndarray:
    """Parses ISO 8601 dates / timestamps to seconds since 1970-01-01 UTC, flagging malformed cells.

    Accepted: ``2012-03-01``, ``2012-03-01T10:00``, ``2012-03-01 10:00:00.5``, ``20120301T100000``,
    with an optional offset (``Z``, ``+02:00``); no offset means UTC. Surrounding whitespace is ignored.

    Args:
        values: text column [N].
        column: column name used in error reasons.
        errors: where malformed rows are flagged.
        numbers: also accept plain numbers (taken as seconds as they are); a cell that parses as a
            finite number is then never read as a date.

    Returns:
        float64 [N]: seconds, NaN where the cell is empty (missing) or malformed.

    Example::

        parse_iso_times(pd.Series(["1970-01-02", "1970-01-01T00:01:00+00:00"]), "ts", errors)  # [86400., 60.]
    """
    text = pc.utf8_trim_whitespace(arrow_text(values))
    empty = pc.fill_null(pc.equal(text, ""), True).to_numpy(zero_copy_only=False)
    out = np.full(len(text), np.nan)
    todo = ~empty
    if numbers:
        plain = _to_float(text, empty)
        finite = np.isfinite(plain)
        out[finite] = plain[finite]
        todo &= ~finite
    if todo.any():
        cells = pd.Series(text.to_numpy(zero_copy_only=False)[todo], dtype=object)
        stamps = pd.to_datetime(cells, format="ISO8601", utc=True, errors="coerce")
        out[todo] = ((stamps - _EPOCH) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)
    what = "a number or an ISO 8601 timestamp" if numbers else "an ISO 8601 timestamp"
    errors.flag(todo & ~np.isfinite(out), column, f"expected {what}", text)
    return out


def map_labels(values: TextColumn, column: str, label_map: Mapping[str, float], errors: RowErrors) -> np.ndarray:
    """Maps label text to numbers through ``label_map``; an empty cell or a label not in the map is malformed.

    Cells and keys are compared with surrounding whitespace removed.

    Args:
        values: text column [N].
        column: column name used in error reasons.
        label_map: label text -> value.
        errors: where malformed rows are flagged.

    Returns:
        float64 [N] (NaN on malformed rows).

    Example::

        map_labels(frame["income"], "income", {"<=50K": 0, ">50K": 1}, errors)
    """
    keys = [k.strip() for k in label_map]
    mapped = np.array([float(v) for v in label_map.values()] + [np.nan], dtype=np.float64)
    text = pc.utf8_trim_whitespace(arrow_text(values))
    at = pc.index_in(text, value_set=pa.array(keys, type=text.type))
    index = pc.fill_null(at, -1).to_numpy(zero_copy_only=False)
    empty = pc.fill_null(pc.equal(text, ""), True).to_numpy(zero_copy_only=False)
    errors.flag(empty, column, "missing label")
    shown = sorted(keys)
    if len(shown) > 8:
        shown = shown[:8] + ["..."]
    errors.flag(~empty & (index < 0), column, f"unknown label (label_map has {shown})", text)
    return mapped[index]
