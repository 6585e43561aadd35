"""Reader of the KDD Cup 2012 track 2 search-ads log (``training.txt``).

Each line, tab-separated, no header: ``Click``, ``Impression``, ``DisplayURL``, ``AdID``,
``AdvertiserID``, ``Depth``, ``Position``, ``QueryID``, ``KeywordID``, ``TitleID``, ``DescriptionID``,
``UserID``. A line aggregates every impression of one (ad, query, user, position) instance:
``Impression`` times shown, ``Click`` times clicked.

Label (binary): 1 when ``Click > 0``, else 0 — one example per line, as the papers that use this data
prepare it. Lines are not expanded into ``Impression`` examples (a line number keys a row's split and
must stay unique; copies of one instance would also straddle train and test). ``Impression`` is checked
(an integer >= 1, at least ``Click``) and otherwise unused.

Fields: the other ten columns, categorical (taken as their text form). ``Depth`` (ads shown) and
``Position`` (the ad's rank, 1..Depth) must be positive integers, every id column a non-negative
integer; ``UserID`` 0 (user unknown in the log) stays its own value. Malformed rows are errors naming
``file:line``, or skipped and counted under ``max_bad_rows``. There is no time column.

The side files of the release (``userid_profile.txt`` with gender and age, the token lists of queries,
keywords, titles and descriptions) are not read; their ids are still fields through the columns above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, Union

import numpy as np
import pandas as pd

from recdim.data.readers.base import BadRowBudget, RawChunk, RawField, RawKind, RawReader, RawSchema
from recdim.data.readers.text import TextFormat, read_delimited
from recdim.data.readers.values import check_digits, parse_numbers
from recdim.data.schema import LabelKind

ID_COLUMNS = ("DisplayURL", "AdID", "AdvertiserID", "QueryID", "KeywordID", "TitleID", "DescriptionID", "UserID")
FIELDS = ("DisplayURL", "AdID", "AdvertiserID", "Depth", "Position") + ID_COLUMNS[3:]
KDD12_FORMAT = TextFormat(sep="\t", columns=("Click", "Impression") + FIELDS)
TRAINING_FILES = ("training.txt", "training.txt.gz")


class KDD12Reader(RawReader):
    """KDD Cup 2012 track 2: binary label ``Click > 0``, ten categorical fields, no time column.

    Args:
        path: ``training.txt`` (``.gz`` allowed), or a directory holding it.

    Example::

        reader = KDD12Reader("kddcup2012-track2/training.txt")
        [f.name for f in reader.schema_hint.fields][:3]  # ["DisplayURL", "AdID", "AdvertiserID"]
    """

    name = "kdd12"

    def __init__(self, path: Union[str, Path]) -> None:
        p = Path(path)
        if p.is_dir():
            p = next((p / n for n in TRAINING_FILES if (p / n).is_file()), p / TRAINING_FILES[0])
        if not p.is_file():
            raise FileNotFoundError(f"{p}: KDD Cup 2012 track 2 training file not found")
        self.path = p

    @property
    def schema_hint(self) -> RawSchema:
        return RawSchema(
            fields=tuple(RawField(n, RawKind.CATEGORICAL) for n in FIELDS),
            label=LabelKind.BINARY,
            has_time=False,
        )

    def chunks(self, chunk_rows: int, budget: BadRowBudget) -> Iterator[RawChunk]:
        for block in read_delimited(self.path, KDD12_FORMAT, chunk_rows):
            frame, errors = block.frame, block.errors
            click = parse_numbers(frame["Click"], "Click", errors, integer=True, required=True, low=0)
            shown = parse_numbers(frame["Impression"], "Impression", errors, integer=True, required=True, low=1)
            errors.flag(click > shown, "Click", "more clicks than impressions", frame["Click"])
            depth = parse_numbers(frame["Depth"], "Depth", errors, integer=True, required=True, low=1)
            position = parse_numbers(frame["Position"], "Position", errors, integer=True, required=True, low=1)
            errors.flag(position > depth, "Position", "greater than Depth", frame["Position"])
            for c in ID_COLUMNS:
                check_digits(frame[c], c, errors)
            keep = errors.charge(budget)
            yield RawChunk(
                features=pd.DataFrame({c: frame[c] for c in FIELDS})[keep].reset_index(drop=True),
                label=(click[keep] > 0).astype(np.float64),
                lines=block.lines[keep],
                file=str(self.path),
            )

    def source(self) -> Dict[str, str]:
        return {"reader": self.name, "input": str(self.path)}
