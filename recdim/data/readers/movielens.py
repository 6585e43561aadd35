"""Reader of the GroupLens MovieLens ratings, with user and movie side features.

The layout is detected from what the directory holds (or named by ``variant``):

- ``ml-100k``: ``u.data`` (tab), ``u.user`` and ``u.item`` (``|``, latin-1, 19 genre flags).
- ``ml-1m``: ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``, latin-1; genres ``A|B``).
- ``ml-10m``: ``ratings.dat`` and ``movies.dat`` (``::``, no user table, half-star ratings); a
  directory with ``ratings.dat`` but no ``users.dat`` is this layout.
- ``ml-20m`` (also ml-25m / ml-latest): ``ratings.csv`` (header ``userId,movieId,rating,timestamp``)
  and ``movies.csv`` (header ``movieId,title,genres``, quoted titles), no user table.

Detection tries ``u.data``, then ``ratings.dat`` (``ml-1m`` when ``users.dat`` is beside it, else
``ml-10m``), then ``ratings.csv``. Every side table of the layout must be present.

Fields: ``user_id``, ``item_id``, then where the layout has them ``age``, ``gender``, ``occupation``,
``zip`` (categorical) and ``genres`` (a bag of genre names; ``(no genres listed)`` is an empty bag).
``timestamp`` is the time column. Labels follow :mod:`recdim.data.readers.rating_task`: task
``rating`` keeps the rating, task ``ctr`` maps rating >= 4 to 1 and <= 2 to 0 and drops the rest
(counted as ``label_filtered``). Ids must be positive integers and ratings lie in [0.5, 5]; anything
else is a malformed row. A rating whose user or movie is missing from the side tables gets missing
side features (the OOV id).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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
from recdim.data.readers.rating_task import RatingTask, check_task, label_kind, rating_labels
from recdim.data.readers.text import TextFormat, read_delimited, read_header
from recdim.data.readers.values import parse_numbers

RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
USER_FIELDS = ("age", "gender", "occupation", "zip")
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
ITEM_COLUMNS_100K = ("item_id", "title", "release", "video", "url") + ML100K_GENRES
NO_GENRES = "(no genres listed)"
#: the layouts ``variant`` may name; ``auto`` detects one from the directory.
VARIANTS = ("auto", "ml-100k", "ml-1m", "ml-10m", "ml-20m")
# Side tables are small; they are read in one go.
_SIDE_CHUNK = 1 << 20


@dataclass(frozen=True)
class _File:
    """One file of a layout: its name, its text format and (CSV files) the header it must have."""

    name: str
    format: TextFormat
    header: Optional[Tuple[str, ...]] = None


@dataclass(frozen=True)
class _Layout:
    variant: str
    ratings: _File
    users: Optional[_File]
    items: _File


_DAT_MOVIES = _File("movies.dat", TextFormat("::", ("item_id", "title", "genres"), encoding="latin-1"))
_DAT_RATINGS = _File("ratings.dat", TextFormat("::", RATING_COLUMNS, encoding="latin-1"))
_LAYOUTS = {
    "ml-100k": _Layout(
        "ml-100k",
        _File("u.data", TextFormat("\t", RATING_COLUMNS, encoding="latin-1")),
        _File("u.user", TextFormat("|", ("user_id", "age", "gender", "occupation", "zip"), encoding="latin-1")),
        _File("u.item", TextFormat("|", ITEM_COLUMNS_100K, encoding="latin-1")),
    ),
    "ml-1m": _Layout(
        "ml-1m",
        _DAT_RATINGS,
        _File("users.dat", TextFormat("::", ("user_id", "gender", "age", "occupation", "zip"), encoding="latin-1")),
        _DAT_MOVIES,
    ),
    "ml-10m": _Layout("ml-10m", _DAT_RATINGS, None, _DAT_MOVIES),
    "ml-20m": _Layout(
        "ml-20m",
        _File("ratings.csv", TextFormat(",", quoted=True), ("userId", "movieId", "rating", "timestamp")),
        None,
        _File("movies.csv", TextFormat(",", quoted=True), ("movieId", "title", "genres")),
    ),
}


def detect_layout(path: Path, variant: str = "auto") -> _Layout:
    """The MovieLens layout of directory ``path``: ``variant``, or detected from its files.

    Args:
        path: the MovieLens directory.
        variant: one of :data:`VARIANTS`.

    Returns:
        The layout; every file it needs exists (``FileNotFoundError`` names the first one missing).

    Example::

        detect_layout(Path("ml-10M100K")).variant  # "ml-10m"
    """
    if variant not in VARIANTS:
        raise ValueError(f"MovieLens variant must be one of {list(VARIANTS)}, got {variant!r}")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: expected a MovieLens directory (with u.data, ratings.dat or ratings.csv)")
    if variant == "auto":
        if (path / "u.data").is_file():
            variant = "ml-100k"
        elif (path / "ratings.dat").is_file():
            variant = "ml-1m" if (path / "users.dat").is_file() else "ml-10m"
        elif (path / "ratings.csv").is_file():
            variant = "ml-20m"
        else:
            raise FileNotFoundError(f"{path}: no MovieLens ratings file (u.data, ratings.dat or ratings.csv) found")
    layout = _LAYOUTS[variant]
    for spec in (layout.ratings, layout.users, layout.items):
        if spec is not None and not (path / spec.name).is_file():
            raise FileNotFoundError(f"{path / spec.name}: not found (the {variant} layout needs it)")
    return layout


def _check_header(path: Path, spec: _File) -> None:
    """A CSV file of the layout must start with the expected header (names compared case-insensitively)."""
    if spec.header is None:
        return
    got = read_header(path, spec.format)
    if tuple(n.strip().lower() for n in got) != tuple(n.lower() for n in spec.header):
        raise DataError(path, 1, f"expected the header {','.join(spec.header)}, got {','.join(got)}")


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
        path: the MovieLens directory (ml-100k, ml-1m, ml-10m or ml-20m layout).
        task: ``rating`` (regression on the rating) or ``ctr`` (like / dislike, rating 3 dropped).
        variant: the layout, or ``auto`` to detect it from the files (see the module docstring).

    Example::

        reader = MovieLensReader("../shared/datasets/ml-100k", task="ctr")
        reader.source()["variant"]  # "ml-100k"
    """

    name = "movielens"

    def __init__(self, path: Union[str, Path], task: RatingTask = "rating", variant: str = "auto") -> None:
        check_task(task, "MovieLens")
        self.path = Path(path)
        self.task = task
        self.layout = detect_layout(self.path, variant)
        for spec in (self.layout.ratings, self.layout.items):
            _check_header(self.path / spec.name, spec)

    @property
    def schema_hint(self) -> RawSchema:
        fields = [RawField("user_id", RawKind.CATEGORICAL), RawField("item_id", RawKind.CATEGORICAL)]
        if self.layout.users is not None:
            fields += [RawField(n, RawKind.CATEGORICAL) for n in USER_FIELDS]
        fields.append(RawField("genres", RawKind.MULTI_CATEGORICAL))
        return RawSchema(fields=tuple(fields), label=label_kind(self.task), has_time=True)

    def source(self) -> Dict[str, str]:
        return {"reader": self.name, "input": str(self.path), "variant": self.layout.variant}

    def _side_table(self, spec: _File, names: Tuple[str, ...], budget: BadRowBudget) -> pd.DataFrame:
        """Reads a side table into a frame indexed by its (positive integer) id, first column."""
        path = self.path / spec.name
        parts: List[pd.DataFrame] = []
        seen: set = set()
        for block in read_delimited(path, spec.format, _SIDE_CHUNK):
            frame = _positional(block.frame, names) if spec.format.columns is None else block.frame
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
            out[:] = [tuple(g for g in v.split("|") if g and g != NO_GENRES) for v in frame["genres"]]
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

        path = self.path / layout.ratings.name
        for block in read_delimited(path, layout.ratings.format, chunk_rows):
            frame = block.frame if layout.ratings.format.columns else _positional(block.frame, RATING_COLUMNS)
            errors = block.errors
            user = parse_numbers(frame["user_id"], "user_id", errors, integer=True, required=True, low=1)
            item = parse_numbers(frame["item_id"], "item_id", errors, integer=True, required=True, low=1)
            rating = parse_numbers(frame["rating"], "rating", errors, required=True, low=0.5, high=5)
            stamp = parse_numbers(frame["timestamp"], "timestamp", errors, integer=True, required=True, low=0)
            keep = errors.charge(budget)
            labels = rating_labels(rating[keep], self.task)
            user, item = user[keep][labels.keep], item[keep][labels.keep]
            stamp, lines = stamp[keep][labels.keep], block.lines[keep][labels.keep]
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
                label=labels.label,
                lines=lines,
                file=str(path),
                time=stamp,
                label_filtered=labels.filtered,
            )
