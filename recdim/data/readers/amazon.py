"""Reader of the Amazon product-review ratings CSVs (the "ratings only" files, e.g. ``ratings_Books.csv``).

Each line: ``user,item,rating,timestamp``, comma-separated, no header (the 2014 release; the 2018
release writes ``item,user,rating,timestamp``: set ``order``). User and item are opaque strings
(reviewer ids and ASINs); the rating is a number in [1, 5]; the timestamp is unix seconds, the time
column of ``split_by = "time"``.

Fields: ``user_id``, ``item_id`` (categorical). Labels follow :mod:`recdim.data.readers.rating_task`:
task ``rating`` keeps the rating, task ``ctr`` maps rating >= 4 to 1 and <= 2 to 0 and drops 3
(counted as ``label_filtered``). Malformed rows (wrong column count, an empty user or item, a rating
that is not a number in [1, 5], a timestamp that is not a non-negative integer) are errors naming
``file:line``, or skipped and counted under ``max_bad_rows``; a header line is such a row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, Literal, Tuple, Union

import numpy as np
import pandas as pd

from recdim.data.readers.base import BadRowBudget, RawChunk, RawField, RawKind, RawReader, RawSchema
from recdim.data.readers.rating_task import RatingTask, check_task, label_kind, rating_labels
from recdim.data.readers.text import TextFormat, read_delimited
from recdim.data.readers.values import flag_empty, parse_numbers

AmazonOrder = Literal["user,item,rating,timestamp", "item,user,rating,timestamp"]
ORDERS: Tuple[str, ...] = ("user,item,rating,timestamp", "item,user,rating,timestamp")
FIELDS = ("user_id", "item_id")


def amazon_format(order: str) -> TextFormat:
    """The text format of a ratings file whose columns come in ``order`` (one of :data:`ORDERS`)."""
    if order not in ORDERS:
        raise ValueError(f"Amazon column order must be one of {list(ORDERS)}, got {order!r}")
    names = tuple({"user": "user_id", "item": "item_id"}.get(c, c) for c in order.split(","))
    return TextFormat(sep=",", columns=names, quoted=True)


class AmazonReader(RawReader):
    """Amazon review ratings: ``user_id``, ``item_id`` and a rating (or like / dislike) label, with time.

    Args:
        path: the ratings CSV (``.gz`` allowed).
        task: ``rating`` (regression on the rating) or ``ctr`` (rating >= 4 positive, <= 2 negative,
            3 dropped).
        order: the column order of the file (see the module docstring).

    Example::

        reader = AmazonReader("ratings_Books.csv", task="ctr")
        [f.name for f in reader.schema_hint.fields]  # ["user_id", "item_id"]
    """

    name = "amazon"

    def __init__(
        self,
        path: Union[str, Path],
        task: RatingTask = "rating",
        order: AmazonOrder = "user,item,rating,timestamp",
    ) -> None:
        check_task(task, "Amazon")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: Amazon ratings file not found")
        self.task = task
        self.order = order
        self.format = amazon_format(order)

    @property
    def schema_hint(self) -> RawSchema:
        return RawSchema(
            fields=tuple(RawField(n, RawKind.CATEGORICAL) for n in FIELDS),
            label=label_kind(self.task),
            has_time=True,
        )

    def source(self) -> Dict[str, str]:
        return {"reader": self.name, "input": str(self.path), "order": self.order}

    def chunks(self, chunk_rows: int, budget: BadRowBudget) -> Iterator[RawChunk]:
        for block in read_delimited(self.path, self.format, chunk_rows):
            frame, errors = block.frame, block.errors
            for name in FIELDS:
                flag_empty(frame[name], name, errors)
            rating = parse_numbers(frame["rating"], "rating", errors, required=True, low=1, high=5)
            stamp = parse_numbers(frame["timestamp"], "timestamp", errors, integer=True, required=True, low=0)
            keep = errors.charge(budget)
            labels = rating_labels(rating[keep], self.task)
            rows = np.flatnonzero(keep)[labels.keep]
            yield RawChunk(
                features=pd.DataFrame({n: frame[n] for n in FIELDS}).iloc[rows].reset_index(drop=True),
                label=labels.label,
                lines=block.lines[rows],
                file=str(self.path),
                time=stamp[rows],
                label_filtered=labels.filtered,
            )
