"""Reader of the GroupLens MovieLens ratings, with user and movie side features.

The layout is detected from the directory:

- ``ml-100k``: ``u.data`` (tab), ``u.user`` and ``u.item`` (``|``, latin-1, 19 genre flags).
- ``ml-1m``: ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``, latin-1).
- ``ml-20m`` (also ml-25m / ml-latest): ``ratings.csv`` and ``movies.csv`` (CSV with header, no users).

Fields: ``user_id``, ``item_id``, then where the layout has them ``age``, ``gender``, ``occupation``,
``zip`` (categorical) and ``genres`` (a bag of genre names). ``timestamp`` is the time column.
Task ``rating``: label = rating (:attr:`LabelKind.RATING`). Task ``ctr``: rating >= 4 -> 1,
rating <= 2 -> 0, ratings in between (3, and 2.5 / 3.5 in half-star layouts) are dropped and counted
as ``label_filtered``. Ids must be positive integers and ratings lie in [0.5, 5]; anything else is a
malformed row. A rating whose user or movie is missing from the side tables gets missing side
features (the OOV id).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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
from recdim.data.readers.text import TextFormat, read_delimited
from recdim.data.readers.values import parse_numbers
from recdim.data.schema import LabelKind

RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
USER_FIELDS = ("age", "gender", "occupation", "zip")
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
ITEM_COLUMNS_100K = ("item_id", "title", "release", "video", "url") + ML100K_GENRES
# Side tables are small; they are read in one go.
_SIDE_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Layout:
    variant: str
    ratings: Tuple[str, TextFormat]
    users: Optional[Tuple[str, TextFormat]]
    items: Tuple[str, TextFormat]


_LAYOUTS = (
    _Layout(
        "ml-100k",
        ("u.data", TextFormat("\t", RATING_COLUMNS, encoding="latin-1")),
        ("u.user", TextFormat("|", ("user_id", "age", "gender", "occupation", "zip"), encoding="latin-1")),
        (
            "u.item",
            TextFormat("|", ITEM_COLUMNS_100K, encoding="latin-1"),
        ),
    ),
    _Layout(
        "ml-1m",
        ("ratings.dat", TextFormat("::", RATING_COLUMNS, encoding="latin-1")),
        (
            "users.dat",
            TextFormat("::", ("user_id", "gender", "age", "occupation", "zip"), encoding="latin-1"),
        ),
        ("movies.dat", TextFormat("::", ("item_id", "title", "genres"), encoding="latin-1")),
    ),
    _Layout(
        "ml-20m",
        ("ratings.csv", TextFormat(",", quoted=True)),
        None,
        ("movies.csv", TextFormat(",", quoted=True)),
    ),
)


def detect_layout(path: Path) -> _Layout:
    """The MovieLens layout of directory ``path`` (by its ratings file)."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: expected a MovieLens directory (with u.data, ratings.dat or ratings.csv)")
    for layout in _LAYOUTS:
        if (path / layout.ratings[0]).is_file():
            return layout
    raise FileNotFoundError(f"{path}: no MovieLens ratings file (u.data, ratings.dat or ratings.csv) found")


def _positional(frame: pd.DataFrame, names: Tuple[str, ...]) -> pd.DataFrame:
    """Renames the columns of a CSV read with its own header to ``names`` (by position)."""
    out = frame.iloc[:, : len(names)].copy()
    out.columns = list(names)
    return out


def _with_missing(values: np.ndarray, missing: object) -> np.ndarray:
    """``values`` plus one trailing ``missing`` entry, so that index -1 reads as missing."""
    out = np.empty(len(values) + 1, dtype=object)
    out[:-1] = values
    out[-1] = missing
    return out


class MovieLensReader(RawReader):
    """MovieLens ratings joined with user and movie side features.

    Args:
        path: the MovieLens directory (ml-100k, ml-1m or ml-20m layout).
        task: ``rating`` (regression on the rating) or ``ctr`` (like / dislike, rating 3 dropped).

    Example::

        reader = MovieLensReader("../shared/datasets/ml-100k", task="ctr")
        reader.source()["variant"]  # "ml-100k"
    """

    name = "movielens"

    def __init__(self, path: Union[str, Path], task: Literal["rating", "ctr"] = "rating") -> None:
        if task not in ("rating", "ctr"):
            raise ValueError(f"MovieLens task must be 'rating' or 'ctr', got {task!r}")
        self.path = Path(path)
        self.task = task
        self.layout = detect_layout(self.path)

    @property
    def schema_hint(self) -> RawSchema:
        fields = [RawField("user_id", RawKind.CATEGORICAL), RawField("item_id", RawKind.CATEGORICAL)]
        if self.layout.users is not None:
            fields += [RawField(n, RawKind.CATEGORICAL) for n in USER_FIELDS]
        fields.append(RawField("genres", RawKind.MULTI_CATEGORICAL))
        label = LabelKind.RATING if self.task == "rating" else LabelKind.BINARY
        return RawSchema(fields=tuple(fields), label=label, has_time=True)

    def source(self) -> Dict[str, str]:
        return {"reader": self.name, "input": str(self.path), "variant": self.layout.variant}

    def _side_table(self, spec: Tuple[str, TextFormat], names: Tuple[str, ...], budget: BadRowBudget) -> pd.DataFrame:
        """Reads a side table into a frame indexed by its (positive integer) id, first column."""
        path = self.path / spec[0]
        parts: List[pd.DataFrame] = []
        seen: set = set()
        for block in read_delimited(path, spec[1], _SIDE_CHUNK):
            frame = _positional(block.frame, names) if spec[1].columns is None else block.frame
            errors = block.errors
            ids = parse_numbers(frame[names[0]], names[0], errors, integer=True, required=True, low=1)
            dup = pd.Series(ids).duplicated().to_numpy() | np.isin(ids, list(seen))
            errors.flag(dup & np.isfinite(ids), names[0], "duplicate id", frame[names[0]].to_numpy())
            extra = self._side_checks(frame, errors)
            keep = errors.charge(budget)
            part = frame[keep].copy()
            part.index = pd.Index(ids[keep].astype(np.int64))
            if extra is not None:
                part["genres"] = extra[keep]
            seen.update(part.index.tolist())
            parts.append(part)
        return pd.concat(parts) if parts else pd.DataFrame()

    def _side_checks(self, frame: pd.DataFrame, errors: RowErrors) -> Optional[np.ndarray]:
        """Genre bags of a movie table (None for user tables)."""
        if "genres" in frame.columns:
            out = np.empty(len(frame), dtype=object)
            none = "(no genres listed)"
            out[:] = [tuple(g for g in v.split("|") if g and g != none) for v in frame["genres"]]
            return out
        if ML100K_GENRES[0] in frame.columns:
            flags = np.stack(
                [parse_numbers(frame[g], g, errors, integer=True, required=True, low=0, high=1) for g in ML100K_GENRES],
                axis=1,
            )
            out = np.empty(len(frame), dtype=object)
            out[:] = [tuple(ML100K_GENRES[j] for j in np.flatnonzero(row == 1)) for row in flags]
            return out
        return None

    def chunks(self, chunk_rows: int, budget: BadRowBudget) -> Iterator[RawChunk]:
        layout = self.layout
        users = None
        if layout.users is not None:
            users = self._side_table(layout.users, ("user_id",) + USER_FIELDS, budget)
        items = self._side_table(layout.items, ("item_id", "title", "genres"), budget)
        user_index = pd.Index(users.index) if users is not None else None
        user_cols = {}
        if users is not None:
            user_cols = {n: _with_missing(users[n].to_numpy(), "") for n in USER_FIELDS}
        item_index = pd.Index(items.index)
        genres = _with_missing(items["genres"].to_numpy(), ())

        path = self.path / layout.ratings[0]
        for block in read_delimited(path, layout.ratings[1], chunk_rows):
            frame = block.frame if layout.ratings[1].columns else _positional(block.frame, RATING_COLUMNS)
            errors = block.errors
            user = parse_numbers(frame["user_id"], "user_id", errors, integer=True, required=True, low=1)
            item = parse_numbers(frame["item_id"], "item_id", errors, integer=True, required=True, low=1)
            rating = parse_numbers(frame["rating"], "rating", errors, required=True, low=0.5, high=5)
            stamp = parse_numbers(frame["timestamp"], "timestamp", errors, integer=True, required=True, low=0)
            keep = errors.charge(budget)
            user, item, rating, stamp = user[keep], item[keep], rating[keep], stamp[keep]
            lines = block.lines[keep]
            filtered = 0
            if self.task == "ctr":
                liked = rating >= 4
                decided = liked | (rating <= 2)
                filtered = int((~decided).sum())
                user, item, stamp, lines = user[decided], item[decided], stamp[decided], lines[decided]
                label = liked[decided].astype(np.float64)
            else:
                label = rating
            user_ids = user.astype(np.int64)
            item_ids = item.astype(np.int64)
            columns: Dict[str, Any] = {
                "user_id": text_series(pc.cast(pa.array(user_ids), pa.string())),
                "item_id": text_series(pc.cast(pa.array(item_ids), pa.string())),
            }
            if user_index is not None:
                at = user_index.get_indexer(user_ids)
                columns.update({n: user_cols[n][at] for n in USER_FIELDS})
            columns["genres"] = genres[item_index.get_indexer(item_ids)]
            yield RawChunk(
                features=pd.DataFrame(columns),
                label=label,
                lines=lines,
                file=str(path),
                time=stamp,
                label_filtered=filtered,
            )
