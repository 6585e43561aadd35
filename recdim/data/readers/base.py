"""The interface every raw reader implements, and the bad-row budget they share.

A reader turns one raw source (a Criteo TSV, a MovieLens directory, a generic CSV, the synthetic
generator, ...) into a stream of :class:`RawChunk`\\ s: typed raw values, not yet mapped to ids.
Readers validate what they parse; a malformed row is either skipped and counted (while the
:class:`BadRowBudget` allows it) or raised as a :class:`~recdim.data.errors.DataError` that names the
file and the line. :mod:`recdim.data.preprocess` does everything else (splits, vocabularies, shards).

Raw value conventions inside ``RawChunk.features`` (one column per field of ``schema_hint``):

- ``categorical``: strings (a pandas ``str`` column, see :func:`text_series`); ``""`` or null means
  missing.
- ``multi_categorical``: object column of tuples / lists of non-empty ``str`` (may be empty).
- ``numerical``: float64; ``NaN`` means missing (NaN / inf written in the file are bad rows).
"""

from __future__ import annotations

import abc
import enum
import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa

from recdim.data.errors import DataError
from recdim.data.schema import LabelKind

logger = logging.getLogger(__name__)

# Skipped bad rows logged one by one before going quiet (the total is always in meta.json).
_LOGGED_BAD_ROWS = 10


try:  # pandas >= 2.3: the NaN-missing Arrow string dtype that pandas 3 uses for ``str``
    _TEXT_DTYPE = pd.StringDtype("pyarrow", na_value=np.nan)
except TypeError:  # older pandas
    _TEXT_DTYPE = pd.StringDtype("pyarrow")

#: a text column: pandas string Series, object array of ``str``, or Arrow strings.
TextColumn = Union[pd.Series, np.ndarray, pa.Array, pa.ChunkedArray]


def text_series(values: Union[pa.Array, pa.ChunkedArray]) -> pd.Series:
    """A pandas string column backed by the Arrow string array ``values`` (no per-value copies).

    Args:
        values: Arrow ``string`` / ``large_string`` array.

    Returns:
        pd.Series of pandas' Arrow-backed ``str`` dtype.

    Example::

        text_series(pa.array(["68fd1e64", ""]))
    """
    return pd.Series(values, dtype=_TEXT_DTYPE)


def _pick(values: Any, i: int) -> Any:
    """Element ``i`` of a numpy array, pandas Series or Arrow array, as a plain Python value."""
    if isinstance(values, pd.Series):
        return values.iloc[i]
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values[i].as_py()
    return values[i]


class RawKind(enum.Enum):
    """What a raw column holds (see the module docstring for the value conventions)."""

    CATEGORICAL = "categorical"
    MULTI_CATEGORICAL = "multi_categorical"
    NUMERICAL = "numerical"


@dataclass(frozen=True)
class RawField:
    """One raw feature column.

    Args:
        name: column name in ``RawChunk.features`` and field name in the prepared dataset.
        kind: see :class:`RawKind`.
    """

    name: str
    kind: RawKind


@dataclass(frozen=True)
class RawSchema:
    """The columns a reader yields.

    Args:
        fields: feature columns, in the order they appear in the prepared dataset.
        label: label kind.
        has_time: whether chunks carry ``time`` (needed by ``split_by = "time"``).

    Example::

        RawSchema((RawField("user_id", RawKind.CATEGORICAL),), LabelKind.RATING, has_time=True)
    """

    fields: Tuple[RawField, ...]
    label: LabelKind
    has_time: bool = False


@dataclass
class RawChunk:
    """A block of consecutive good rows of one raw source.

    Args:
        features: one column per ``schema_hint`` field (conventions in the module docstring), N rows.
        label: float64 [N], finite; 0/1 for binary labels.
        lines: int64 [N], the 1-based line of each row in ``file``; strictly increasing over a stream
            and unique, so it also keys the row's random split.
        file: the file the rows come from.
        time: float64 [N] timestamps when the source has a time column, else ``None``.
        label_filtered: rows of this block dropped by a label rule (MovieLens ``ctr``: rating 3).
    """

    features: pd.DataFrame
    label: np.ndarray
    lines: np.ndarray
    file: str
    time: Optional[np.ndarray] = None
    label_filtered: int = 0

    def __len__(self) -> int:
        return len(self.lines)


class BadRowBudget:
    """Counts skipped malformed rows and raises once more than ``limit`` are seen.

    Args:
        limit: rows that may be skipped; 0 makes the first malformed row an error.
        log_rows: log the first skipped rows (off for a second pass over the same input, which sees
            the same rows).

    Example::

        budget = BadRowBudget(0)
        budget.charge("u.data", [7], ["user_id: expected an integer, got 'x'"])  # raises DataError
    """

    def __init__(self, limit: int, log_rows: bool = True) -> None:
        if limit < 0:
            raise ValueError(f"max_bad_rows must be >= 0, got {limit}")
        self.limit = limit
        self.log_rows = log_rows
        self.count = 0

    def charge(self, file: str, lines: Sequence[int], reasons: Sequence[str]) -> None:
        """Records bad rows (in line order); raises :class:`DataError` on the first one past the limit."""
        for line, reason in zip(lines, reasons):
            if self.count >= self.limit:
                if self.limit:
                    reason = f"{reason} (more than max_bad_rows={self.limit} malformed rows)"
                raise DataError(file, int(line), reason)
            self.count += 1
            if self.log_rows and self.count <= _LOGGED_BAD_ROWS:
                logger.warning("skipping malformed row %s:%d: %s", file, line, reason)


class RowErrors:
    """Bad rows found in one block, charged to a :class:`BadRowBudget` in line order.

    A row may be flagged several times; only its first reason is kept.

    Args:
        file: the file the block comes from.
        lines: int64 [N] line numbers of the block's rows.

    Example::

        errors = RowErrors("train.txt", lines)
        errors.flag(values == "x", "C1", "unexpected value", values)
        keep = errors.charge(budget)  # bool [N]
    """

    def __init__(self, file: str, lines: np.ndarray) -> None:
        self.file = file
        self.lines = lines
        self.bad = np.zeros(len(lines), dtype=bool)
        self._reasons: Dict[int, str] = {}
        self._extra: List[Tuple[int, str]] = []

    def flag(self, mask: np.ndarray, column: str, message: str, values: Any = None) -> None:
        """Marks rows ``mask`` (bool [N]) bad as ``"<column>: <message>, got <value>"``.

        ``values`` (numpy array or pandas Series, optional) supplies the offending value.
        """
        mask = np.asarray(mask, dtype=bool)
        for i in np.flatnonzero(mask & ~self.bad):
            got = f", got {_pick(values, int(i))!r}" if values is not None else ""
            self._reasons[int(i)] = f"{column}: {message}{got}"
        self.bad |= mask

    def add_lines(self, lines: Sequence[int], reasons: Sequence[str]) -> None:
        """Records bad lines that never made it into the block (e.g. a wrong number of columns)."""
        self._extra.extend((int(n), r) for n, r in zip(lines, reasons))

    def charge(self, budget: BadRowBudget) -> np.ndarray:
        """Charges every bad row to ``budget`` in line order; returns the bool mask of good rows."""
        found = [(int(self.lines[i]), r) for i, r in self._reasons.items()] + self._extra
        found.sort()
        budget.charge(self.file, [n for n, _ in found], [r for _, r in found])
        return ~self.bad


class RawReader(abc.ABC):
    """A raw source: its columns (``schema_hint``) and a stream of validated chunks.

    Readers must yield the same rows in the same order on every call of :meth:`chunks`, whatever
    ``chunk_rows`` is (``prepare`` reads the source two or three times).

    Example::

        reader = CriteoReader("train.txt")
        for chunk in reader.chunks(100_000, BadRowBudget(0)):
            chunk.features["C1"]  # a string column of hex ids
    """

    #: short name recorded in meta.json ``source.reader``.
    name: str = ""

    @property
    @abc.abstractmethod
    def schema_hint(self) -> RawSchema:
        """The fields, label kind and time availability of the chunks."""

    @abc.abstractmethod
    def chunks(self, chunk_rows: int, budget: BadRowBudget) -> Iterator[RawChunk]:
        """Yields blocks of at most ``chunk_rows`` good rows, charging malformed rows to ``budget``.

        Args:
            chunk_rows: maximum rows read per block (bounds memory).
            budget: where malformed rows are counted; it raises past its limit.

        Returns:
            An iterator of :class:`RawChunk` in file order.
        """

    def source(self) -> Dict[str, Any]:
        """What meta.json records under ``source``."""
        return {"reader": self.name}

    def extra_meta(self) -> Dict[str, Any]:
        """Extra top-level meta.json entries (the synthetic generator's ``planted``)."""
        return {}
