"""Reader of the Avazu click-through CSV (header ``id,click,hour,C1,banner_pos,site_id,...,C21``).

``click`` is the binary label, ``id`` is dropped, every other column is categorical (taken as an
opaque string). ``hour`` (``YYMMDDHH``) stays a categorical field and also yields two more:
``hour_of_day`` (``"0"``..``"23"``) and ``weekday`` (``"0"`` = Monday .. ``"6"``); it is the time
column of ``split_by = "time"`` (as seconds since 1970).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, Tuple, Union

import numpy as np
import pandas as pd

from recdim.data.errors import DataError
from recdim.data.readers.base import BadRowBudget, RawChunk, RawField, RawKind, RawReader, RawSchema
from recdim.data.readers.text import TextFormat, read_delimited, read_header
from recdim.data.readers.values import parse_label
from recdim.data.schema import LabelKind

AVAZU_FORMAT = TextFormat(sep=",")
DERIVED = ("hour_of_day", "weekday")


class AvazuReader(RawReader):
    """Avazu CSV: binary label ``click``, categorical columns, ``hour`` as time.

    Args:
        path: the CSV file (``.gz`` allowed), or a directory holding ``train`` / ``train.csv``.

    Example::

        reader = AvazuReader("avazu/train.csv")
        [f.name for f in reader.schema_hint.fields][-2:]  # ["hour_of_day", "weekday"]
    """

    name = "avazu"

    def __init__(self, path: Union[str, Path]) -> None:
        p = Path(path)
        if p.is_dir():
            candidates = [p / n for n in ("train.csv", "train", "train.gz", "train.csv.gz")]
            p = next((c for c in candidates if c.is_file()), candidates[0])
        if not p.is_file():
            raise FileNotFoundError(f"{p}: Avazu input file not found")
        self.path = p
        header = read_header(p, AVAZU_FORMAT)
        for needed in ("click", "hour"):
            if needed not in header:
                raise DataError(p, 1, f"header has no {needed!r} column (got {list(header)})")
        self._header = header
        self._categorical: Tuple[str, ...] = tuple(c for c in header if c not in ("id", "click"))

    @property
    def schema_hint(self) -> RawSchema:
        names = self._categorical + DERIVED
        return RawSchema(
            fields=tuple(RawField(n, RawKind.CATEGORICAL) for n in names),
            label=LabelKind.BINARY,
            has_time=True,
        )

    def chunks(self, chunk_rows: int, budget: BadRowBudget) -> Iterator[RawChunk]:
        for block in read_delimited(self.path, AVAZU_FORMAT, chunk_rows):
            frame, errors = block.frame, block.errors
            label = parse_label(frame["click"], "click", LabelKind.BINARY, errors)
            hour = frame["hour"]
            stamp = pd.to_datetime(hour, format="%y%m%d%H", errors="coerce")
            valid = stamp.notna().to_numpy() & (hour.str.len() == 8).fillna(False).to_numpy(dtype=bool)
            errors.flag(~valid, "hour", "expected YYMMDDHH", hour)
            columns: Dict[str, Any] = {c: frame[c] for c in self._categorical}
            filled = stamp.fillna(pd.Timestamp(0))
            columns["hour_of_day"] = filled.dt.hour.astype(str)
            columns["weekday"] = filled.dt.dayofweek.astype(str)
            seconds = (filled - pd.Timestamp(0)).dt.total_seconds().to_numpy(dtype=np.float64)
            keep = errors.charge(budget)
            yield RawChunk(
                features=pd.DataFrame(columns)[keep].reset_index(drop=True),
                label=label[keep],
                lines=block.lines[keep],
                file=str(self.path),
                time=seconds[keep],
            )

    def source(self) -> Dict[str, str]:
        return {"reader": self.name, "input": str(self.path)}
