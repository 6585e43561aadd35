"""Reader of the Criteo display-advertising TSV (Kaggle ``train.txt`` layout).

Each line: ``label``, 13 integer columns ``I1..I13``, 26 hashed categorical columns ``C1..C26``
(8-digit hex strings), tab-separated; an empty cell is a missing value. Categorical values are taken
as opaque strings. Malformed rows (wrong column count, a label other than 0/1, a non-integer in an
``I`` column) are errors naming ``file:line``, or skipped and counted under ``max_bad_rows``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, Union

import pandas as pd

from recdim.data.readers.base import BadRowBudget, RawChunk, RawField, RawKind, RawReader, RawSchema
from recdim.data.readers.text import TextFormat, read_delimited
from recdim.data.readers.values import parse_label, parse_numbers
from recdim.data.schema import LabelKind

INT_COLUMNS = tuple(f"I{i}" for i in range(1, 14))
CAT_COLUMNS = tuple(f"C{i}" for i in range(1, 27))
CRITEO_FORMAT = TextFormat(sep="\t", columns=("label",) + INT_COLUMNS + CAT_COLUMNS)


class CriteoReader(RawReader):
    """Criteo TSV: binary label, ``I1..I13`` numerical, ``C1..C26`` categorical, no time column.

    Args:
        path: the TSV file (``.gz`` allowed), or a directory holding ``train.txt``.

    Example::

        reader = CriteoReader("criteo/train.txt")
        reader.schema_hint.fields[0]  # RawField("I1", RawKind.NUMERICAL)
    """

    name = "criteo"

    def __init__(self, path: Union[str, Path]) -> None:
        p = Path(path)
        if p.is_dir():
            p = p / "train.txt"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: Criteo input file not found")
        self.path = p

    @property
    def schema_hint(self) -> RawSchema:
        fields = tuple(RawField(c, RawKind.NUMERICAL) for c in INT_COLUMNS)
        fields += tuple(RawField(c, RawKind.CATEGORICAL) for c in CAT_COLUMNS)
        return RawSchema(fields=fields, label=LabelKind.BINARY, has_time=False)

    def chunks(self, chunk_rows: int, budget: BadRowBudget) -> Iterator[RawChunk]:
        for block in read_delimited(self.path, CRITEO_FORMAT, chunk_rows):
            frame, errors = block.frame, block.errors
            label = parse_label(frame["label"], "label", LabelKind.BINARY, errors)
            columns: Dict[str, Any] = {}
            for c in INT_COLUMNS:
                columns[c] = parse_numbers(frame[c], c, errors, integer=True)
            columns.update({c: frame[c] for c in CAT_COLUMNS})
            keep = errors.charge(budget)
            yield RawChunk(
                features=pd.DataFrame(columns)[keep].reset_index(drop=True),
                label=label[keep],
                lines=block.lines[keep],
                file=str(self.path),
            )

    def source(self) -> Dict[str, str]:
        return {"reader": self.name, "input": str(self.path)}
