"""Chunked reading of delimited text files (TSV, CSV, ``::``-separated) with exact line numbers.

Every record must sit on one physical line (quoted newlines are not supported: such a record shows
up as a row with the wrong number of columns). Lines are read in blocks; the separators of each line
are counted first, so rows with a wrong number of columns are caught (and reported by line) before
the block is parsed by pyarrow's CSV reader. Blank lines are skipped; ``.gz`` files are read
transparently.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from recdim.data.errors import DataError
from recdim.data.readers.base import RowErrors, text_series

# Stand-in for a multi-character separator before handing a block to pyarrow.
_UNIT_SEPARATOR = "\x1f"
_MAX_BLOCK = (1 << 31) - 1


@dataclass(frozen=True)
class TextFormat:
    """How a delimited text file is laid out.

    Args:
        sep: column separator (one or more characters).
        columns: column names when the file has no header; ``None`` reads them from the first line.
        quoted: whether fields may be double-quoted (CSV style).
        encoding: text encoding of the file.

    Example::

        TextFormat(sep="|", columns=("user", "age", "gender", "occupation", "zip"), encoding="latin-1")
    """

    sep: str
    columns: Optional[Tuple[str, ...]] = None
    quoted: bool = False
    encoding: str = "utf-8"


@dataclass
class TextChunk:
    """A block of lines that have the right number of columns.

    Args:
        frame: one string column (:func:`text_series`) per file column, N rows.
        lines: int64 [N] 1-based line numbers.
        errors: bad rows found so far (wrong column counts are already in it); readers add their
            own checks and then call ``errors.charge(budget)``.
    """

    frame: pd.DataFrame
    lines: np.ndarray
    errors: RowErrors


def open_binary(path: Path) -> BinaryIO:
    """Opens ``path`` for binary reading, decompressing ``.gz`` files."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def read_header(path: Path, fmt: TextFormat) -> Tuple[str, ...]:
    """The column names of ``path``: ``fmt.columns``, or its first line when the file has a header."""
    if fmt.columns is not None:
        return fmt.columns
    with open_binary(path) as fh:
        first = fh.readline()
    if not first.strip():
        raise DataError(path, 1, "empty file (expected a header line)")
    names = _split_line(first.decode(fmt.encoding).lstrip("\ufeff").rstrip("\r\n"), fmt)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(path, 1, f"duplicate column names {dup} in the header")
    return names


def _split_line(text: str, fmt: TextFormat) -> Tuple[str, ...]:
    if fmt.quoted and len(fmt.sep) == 1:
        return tuple(next(csv.reader([text], delimiter=fmt.sep)))
    return tuple(text.split(fmt.sep))


def _count_fields(raw: List[bytes], fmt: TextFormat, sep: bytes) -> np.ndarray:
    counts = np.fromiter((line.count(sep) + 1 for line in raw), dtype=np.int64, count=len(raw))
    if fmt.quoted:
        for i, line in enumerate(raw):
            if b'"' in line:
                try:
                    counts[i] = len(_split_line(line.decode(fmt.encoding).rstrip("\r\n"), fmt))
                except (UnicodeDecodeError, csv.Error):
                    counts[i] = -1
    return counts


def _parse_block(block: bytes, names: int, fmt: TextFormat) -> pa.Table:
    delimiter = fmt.sep if len(fmt.sep) == 1 else _UNIT_SEPARATOR
    if len(fmt.sep) > 1:
        block = block.replace(fmt.sep.encode(fmt.encoding), _UNIT_SEPARATOR.encode())
    columns = [f"c{i}" for i in range(names)]
    if not block:
        return pa.table({c: pa.array([], type=pa.string()) for c in columns})
    return pacsv.read_csv(
        io.BytesIO(block),
        read_options=pacsv.ReadOptions(
            column_names=columns,
            use_threads=False,
            encoding=fmt.encoding,
            block_size=min(len(block) + 1, _MAX_BLOCK),  # one block: long lines never straddle two
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, quote_char='"' if fmt.quoted else False, ignore_empty_lines=False
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _undecodable(raw: List[bytes], encoding: str) -> List[int]:
    bad = []
    for i, line in enumerate(raw):
        try:
            line.decode(encoding)
        except UnicodeDecodeError:
            bad.append(i)
    return bad


def read_delimited(path: Path, fmt: TextFormat, chunk_rows: int) -> Iterator[TextChunk]:
    """Reads ``path`` in blocks of at most ``chunk_rows`` lines.

    Args:
        path: the text file (``.gz`` allowed).
        fmt: its layout.
        chunk_rows: lines per block.

    Returns:
        An iterator of :class:`TextChunk`; rows with a wrong number of columns are left out of the
        frame and recorded in ``chunk.errors``. Raises :class:`DataError` when the file has no data
        line.

    Example::

        for chunk in read_delimited(Path("u.data"), TextFormat("\\t", ("u", "i", "r", "t")), 10_000):
            keep = chunk.errors.charge(budget)
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    names = read_header(path, fmt)
    expected = len(names)
    sep = fmt.sep.encode(fmt.encoding)
    line_no = 0
    data_lines = 0
    with open_binary(path) as fh:
        if fmt.columns is None:
            fh.readline()
            line_no = 1
        while True:
            try:
                raw = list(itertools.islice(fh, chunk_rows))
            except (EOFError, OSError, zlib.error) as e:  # a truncated or corrupt .gz
                raise DataError(path, line_no + 1, f"cannot read past this line: {e} (truncated or corrupt?)") from None
            if not raw:
                break
            lines = np.arange(line_no + 1, line_no + 1 + len(raw), dtype=np.int64)
            line_no += len(raw)
            nonblank = np.fromiter((bool(r.strip()) for r in raw), dtype=bool, count=len(raw))
            if not nonblank.all():
                raw = [r for r, keep in zip(raw, nonblank) if keep]
                lines = lines[nonblank]
            if not raw:
                continue
            data_lines += len(raw)
            counts = _count_fields(raw, fmt, sep)
            ok = counts == expected
            bad_lines = [int(n) for n in lines[~ok]]
            bad_reasons = [
                f"expected {expected} columns, got {c}" if c >= 0 else "unparsable quoting" for c in counts[~ok]
            ]
            good = [r for r, keep in zip(raw, ok) if keep]
            table, lines = _parse_good(good, lines[ok], expected, fmt, path, bad_lines, bad_reasons)
            errors = RowErrors(str(path), lines)
            errors.add_lines(bad_lines, bad_reasons)
            frame = pd.DataFrame({n: text_series(table.column(i)) for i, n in enumerate(names)})
            yield TextChunk(frame, lines, errors)
    if data_lines == 0:
        raise DataError(path, line_no + 1, "no data rows (empty file)")


def _parse_good(
    good: List[bytes],
    lines: np.ndarray,
    expected: int,
    fmt: TextFormat,
    path: Path,
    bad_lines: List[int],
    bad_reasons: List[str],
) -> Tuple[pa.Table, np.ndarray]:
    """Parses the well-shaped lines; lines that fail to decode are appended to ``bad_lines``."""
    if good and not good[-1].endswith(b"\n"):
        good = good[:-1] + [good[-1] + b"\n"]
    try:
        return _parse_block(b"".join(good), expected, fmt), lines
    except pa.ArrowInvalid as e:
        bad = _undecodable(good, fmt.encoding)
        if not bad:
            raise DataError(path, int(lines[0]), f"cannot parse the block starting here: {e}") from e
    keep = np.ones(len(good), dtype=bool)
    keep[bad] = False
    bad_lines.extend(int(n) for n in lines[bad])
    bad_reasons.extend([f"not valid {fmt.encoding} text"] * len(bad))
    kept = [g for g, k in zip(good, keep) if k]
    return _parse_block(b"".join(kept), expected, fmt), lines[keep]
