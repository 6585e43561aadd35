"""Reader of a generic CSV or Parquet file described by a :class:`~recdim.config.TabularConfig`.

CSV (any other suffix, ``.gz`` allowed): a header line, ``delimiter``-separated, double quotes
allowed, one record per line; an empty cell is a missing value. Parquet (``.parquet`` / ``.pq``):
nulls are missing values and "line" in error messages is the 1-based row number.

Column kinds: ``categorical`` (any type, taken as its text form), ``multi_categorical`` (text joined
by the field's ``separator``, or a Parquet list column), ``numerical`` (a number; NaN / inf written in
the data are malformed rows). The label must be a finite number (0 or 1 for ``binary``), or, with
``label_map``, a text the map names (e.g. ``<=50K`` / ``>50K``; surrounding whitespace ignored; any other
text is a malformed row). The optional time column holds numbers (e.g. unix seconds) or ISO 8601
dates / timestamps (``2012-03-01``, ``2012-03-01T10:00:00+02:00``; converted to seconds since 1970 UTC),
as ``time_format`` says; a Parquet timestamp, date or numeric column is read as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recdim.config import TabularConfig, TabularFieldConfig
from recdim.data.errors import DataError
from recdim.data.readers.base import (
    BadRowBudget,
    RawChunk,
    RawField,
    RawKind,
    RawReader,
    RawSchema,
    RowErrors,
    text_series,
)
from recdim.data.readers.text import TextFormat, read_delimited, read_header
from recdim.data.readers.values import (
    bag_split,
    check_numbers,
    map_labels,
    parse_iso_times,
    parse_label,
    parse_numbers,
)
from recdim.data.schema import LabelKind

PARQUET_SUFFIXES = (".parquet", ".pq")
#: a raw column of one block: text (CSV) or an Arrow array (Parquet).
Column = Union[pd.Series, pa.Array]


class TabularReader(RawReader):
    """A CSV or Parquet file whose columns are described by ``config``.

    Args:
        path: the CSV or Parquet file.
        config: which columns are features (and of which kind), the label and the time column.

    Example::

        cfg = TabularConfig(fields=(TabularFieldConfig("user", "categorical"),), label="click")
        reader = TabularReader("clicks.csv", cfg)
    """

    name = "tabular"

    def __init__(self, path: Union[str, Path], config: TabularConfig) -> None:
        self.path = Path(path)
        self.config = config
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: tabular input file not found")
        if not config.fields:
            raise ValueError("tabular.fields is empty: list the feature columns")
        names = [f.name for f in config.fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup or "label" in names:
            raise ValueError(f"tabular.fields: duplicate names {dup} or a field called 'label'")
        self.is_parquet = self.path.suffix.lower() in PARQUET_SUFFIXES
        self.format = TextFormat(sep=config.delimiter, quoted=True)
        if self.is_parquet:
            columns = pq.ParquetFile(self.path).schema_arrow.names
            if pq.ParquetFile(self.path).metadata.num_rows == 0:
                raise DataError(self.path, 1, "no data rows (empty file)")
        else:
            columns = list(read_header(self.path, self.format))
        wanted = names + [config.label] + ([config.time_column] if config.time_column else [])
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise DataError(self.path, 1, f"no column(s) {missing} (columns are {list(columns)})")

    @property
    def schema_hint(self) -> RawSchema:
        return RawSchema(
            fields=tuple(RawField(f.name, RawKind(f.kind)) for f in self.config.fields),
            label=LabelKind(self.config.label_kind),
            has_time=bool(self.config.time_column),
        )

    def source(self) -> Dict[str, str]:
        kind = "parquet" if self.is_parquet else "csv"
        return {"reader": self.name, "input": str(self.path), "format": kind}

    def chunks(self, chunk_rows: int, budget: BadRowBudget) -> Iterator[RawChunk]:
        cfg = self.config
        kind = LabelKind(cfg.label_kind)
        for lines, errors, raw in self._blocks(chunk_rows):
            columns: Dict[str, Any] = {f.name: _feature(f, raw[f.name], errors) for f in cfg.fields}
            if cfg.label_map:
                label = map_labels(_as_text(raw[cfg.label]), cfg.label, cfg.label_map, errors)
            else:
                label = _number(raw[cfg.label], cfg.label, errors, kind)
            time = _time(raw[cfg.time_column], cfg.time_column, cfg.time_format, errors) if cfg.time_column else None
            keep = errors.charge(budget)
            yield RawChunk(
                features=pd.DataFrame(columns)[keep].reset_index(drop=True),
                label=label[keep],
                lines=lines[keep],
                file=str(self.path),
                time=None if time is None else time[keep],
            )

    def _blocks(self, chunk_rows: int) -> Iterator[Tuple[np.ndarray, RowErrors, Dict[str, Column]]]:
        """(line numbers, errors, column name -> text Series or Arrow array) per block."""
        if not self.is_parquet:
            for block in read_delimited(self.path, self.format, chunk_rows):
                yield block.lines, block.errors, {c: block.frame[c] for c in block.frame.columns}
            return
        cfg = self.config
        wanted = [f.name for f in cfg.fields] + [cfg.label] + ([cfg.time_column] if cfg.time_column else [])
        wanted = list(dict.fromkeys(wanted))
        first = 1
        parquet = pq.ParquetFile(self.path)
        for batch in parquet.iter_batches(batch_size=chunk_rows, columns=wanted, use_threads=False):
            lines = np.arange(first, first + batch.num_rows, dtype=np.int64)
            first += batch.num_rows
            yield lines, RowErrors(str(self.path), lines), {c: batch.column(c) for c in wanted}


def _is_numeric(values: Column) -> bool:
    if not isinstance(values, pa.Array):
        return False
    t = values.type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _as_text(values: Column) -> pd.Series:
    """Text form of a column; missing values (nulls) become ``""``."""
    if isinstance(values, pa.Array):
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            values = pc.cast(values, pa.string())
        return text_series(pc.fill_null(values, ""))
    return values


def _feature(f: TabularFieldConfig, values: Column, errors: RowErrors) -> Any:
    """The raw feature column of one field (see the conventions in ``readers.base``)."""
    if f.kind == "numerical":
        return _number(values, f.name, errors, None)
    if f.kind == "categorical":
        return _as_text(values)
    if isinstance(values, pa.Array) and pa.types.is_list(values.type):
        bags: List[Tuple[str, ...]] = [
            () if b is None else tuple(str(v) for v in b if v is not None and str(v)) for b in values.to_pylist()
        ]
        out = np.empty(len(bags), dtype=object)
        out[:] = bags
        return out
    return bag_split(_as_text(values), f.separator)


def _number(values: Column, column: str, errors: RowErrors, label: Optional[LabelKind]) -> np.ndarray:
    """A numeric column (``label`` set: a label of that kind, which may not be missing)."""
    if not _is_numeric(values):
        text = _as_text(values)
        if label is None:
            return parse_numbers(text, column, errors)
        return parse_label(text, column, label, errors)
    missing = values.is_null().to_numpy(zero_copy_only=False)
    numbers = pc.cast(values, pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
    out = check_numbers(numbers, missing, column, errors)
    if label is not None:
        errors.flag(missing, column, "missing label")
        if label == LabelKind.BINARY:
            errors.flag(np.isfinite(out) & (out != 0) & (out != 1), column, "expected 0 or 1", out)
    return out


def _time(values: Column, column: str, time_format: str, errors: RowErrors) -> np.ndarray:
    """Timestamps as float64 seconds: numbers as they are, ISO 8601 text and Parquet timestamps / dates
    converted to seconds since 1970 UTC (``time_format``: ``number``, ``iso8601`` or ``auto``)."""
    if isinstance(values, pa.Array) and (pa.types.is_timestamp(values.type) or pa.types.is_date(values.type)):
        micros = pc.cast(pc.cast(values, pa.timestamp("us")), pa.int64())
        values = pc.divide(pc.cast(micros, pa.float64()), 1e6)
    if time_format == "number" or _is_numeric(values):
        out = _number(values, column, errors, None)
    else:
        out = parse_iso_times(_as_text(values), column, errors, numbers=time_format == "auto")
    errors.flag(np.isnan(out), column, "missing time")
    return out
