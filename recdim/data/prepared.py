"""Reads a prepared dataset directory (``docs/data-format.md``) into columnar arrays."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recdim.data.schema import FieldKind, Schema

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class SparseColumn:
    """Ids of one sparse field for N rows in CSR form.

    Args:
        values: [nnz] int64 ids.
        offsets: [N + 1] int64; row i holds ``values[offsets[i]:offsets[i+1]]``.
        weights: [nnz] float32 per-value weights, or None.
    """

    values: np.ndarray
    offsets: np.ndarray
    weights: Optional[np.ndarray] = None

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class SplitArrays:
    """One split held as numpy arrays.

    Args:
        labels: [N] float32.
        dense: [N, D] float32.
        sparse: one :class:`SparseColumn` per sparse feature, in feature order.
    """

    labels: np.ndarray
    dense: np.ndarray
    sparse: Dict[str, SparseColumn]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class PreparedDataset:
    """A prepared dataset on disk: schema, split shards and per-id train counts.

    Args:
        path: the directory ``recdim prepare`` wrote.

    Example::

        ds = PreparedDataset("data/ml100k-rating")
        train = ds.load_split("train", features=["user_id", "item_id"])
        counts = ds.counts("user_id")       # [num_embeddings] int64
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path}: no prepared dataset here; run `recdim prepare` first")
        try:
            self.meta: Dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}:{e.lineno}: invalid JSON ({e.msg})") from e
        version = self.meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format_version {version!r}, this recdim reads {FORMAT_VERSION}")
        try:
            self.schema = Schema.from_json(self.meta["schema"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"{meta_path}: bad schema: {e}") from e

    @property
    def fingerprint(self) -> Optional[str]:
        """The fingerprint of this dataset's encoding (:mod:`recdim.data.vocab_store`); None for a dataset
        prepared before vocabularies were saved."""
        return self.meta.get("fingerprint")

    def split_rows(self, split: str) -> int:
        return int(self.meta["splits"][split]["rows"])

    def split_files(self, split: str) -> List[Path]:
        if split not in self.meta.get("splits", {}):
            raise KeyError(f"{self.path / 'meta.json'}: no split {split!r}")
        return [self.path / f for f in self.meta["splits"][split]["files"]]

    def counts(self, field: str) -> np.ndarray:
        """Train-split frequency of every id of ``field`` ([num_embeddings] int64)."""
        spec = self.schema[field]
        p = self.path / "counts" / f"{field}.npy"
        arr = np.load(p, allow_pickle=False)
        if arr.shape != (spec.num_embeddings,):
            raise ValueError(f"{p}: shape {arr.shape}, expected ({spec.num_embeddings},)")
        return arr

    def feature_names(self, features: Sequence[str] = ()) -> List[str]:
        """Sparse features to use: ``features`` validated against the schema, or all of them."""
        if not features:
            return list(self.schema.sparse_names)
        for f in features:
            if not self.schema[f].is_sparse:
                raise ValueError(f"{self.path}: field {f!r} is {self.schema[f].kind.value}, not sparse")
        return list(features)

    def load_split(self, split: str, features: Sequence[str] = ()) -> SplitArrays:
        """Reads every shard of ``split`` into memory (dense, labels and the chosen sparse features).

        Memory is about 8 bytes per id plus 4 per dense value; for splits larger than memory, read
        shard by shard with :meth:`split_files`.
        """
        names = self.feature_names(features)
        files = self.split_files(split)
        columns = ["label", *self.schema.dense_names, *names]
        tables = []
        for f in files:
            try:
                tables.append(pq.read_table(f, columns=columns))
            except (OSError, pa.ArrowInvalid) as e:
                raise ValueError(f"{f}: cannot read Parquet shard: {e}") from e
        table = pa.concat_tables(tables) if tables else None
        return arrays_from_table(table, self.schema, names, str(self.path / split))


def arrays_from_table(table: Optional[pa.Table], schema: Schema, names: Sequence[str], where: str) -> SplitArrays:
    """Decodes a table in the prepared columns (``docs/data-format.md``) into :class:`SplitArrays`.

    Args:
        table: rows with ``label`` (optional: zeros when absent), the dense fields and ``names``.
        schema: the dataset's schema.
        names: sparse features to decode, in order.
        where: file or split named in errors.
    """
    n = 0 if table is None else table.num_rows
    if table is not None:
        missing = [c for c in [*schema.dense_names, *names] if c not in table.column_names]
        if missing:
            raise ValueError(f"{where}: missing columns {missing}")
    has_label = table is not None and "label" in table.column_names
    labels = _np(table, "label", np.float32) if has_label else np.zeros(n, np.float32)
    dense = np.zeros((n, len(schema.dense_names)), np.float32)
    for j, name in enumerate(schema.dense_names):
        dense[:, j] = _np(table, name, np.float32)
    sparse: Dict[str, SparseColumn] = {}
    for name in names:
        spec = schema[name]
        if spec.kind == FieldKind.CATEGORICAL:
            vals = _ids(table.column(name), spec.num_embeddings, where, name)
            sparse[name] = SparseColumn(vals, np.arange(n + 1, dtype=np.int64))
        elif spec.kind == FieldKind.MULTI_CATEGORICAL:
            col = table.column(name).combine_chunks()
            offsets = col.offsets.to_numpy().astype(np.int64)
            vals = _ids(col.values, spec.num_embeddings, where, name, offsets)
            sparse[name] = SparseColumn(vals[offsets[0] : offsets[-1]], offsets - offsets[0])
        else:  # WEIGHTED: one id 0 per row, weighted by the value
            w = _np(table, name, np.float32)
            sparse[name] = SparseColumn(np.zeros(n, np.int64), np.arange(n + 1, dtype=np.int64), w)
        col = sparse[name]
        if col.values.size and (col.values.min() < 0 or col.values.max() >= spec.num_embeddings):
            raise ValueError(f"{where}: field {name!r} has ids outside [0, {spec.num_embeddings})")
    return SplitArrays(labels=labels, dense=dense, sparse=sparse)


def _ids(
    col: Union[pa.Array, pa.ChunkedArray], n: int, where: str, name: str, offsets: Optional[np.ndarray] = None
) -> np.ndarray:
    """int64 ids of a column; a null, NaN, fractional, negative or too large id is an error naming the
    row (1-based; for a bag, the row holding it) and the column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()

    def row_of(i: int) -> int:
        return int(i) + 1 if offsets is None else int(np.searchsorted(offsets, i, side="right"))

    if pa.types.is_integer(col.type) and col.null_count == 0:
        vals = col.to_numpy().astype(np.int64)
    else:
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type)):
            raise ValueError(f"{where}: column {name!r} holds {col.type}, not integer ids")
        f = col.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = ~np.isfinite(f) | (f != np.floor(f))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{where}: row {row_of(i)}, column {name!r}: id {float(f[i])!r} is not a whole number")
        vals = f.astype(np.int64)
    out = (vals < 0) | (vals >= n)
    if out.any():
        i = int(np.argmax(out))
        raise ValueError(f"{where}: row {row_of(i)}, column {name!r}: id {int(vals[i])} is outside [0, {n})")
    return vals


def _np(table: pa.Table, name: str, dtype: type) -> np.ndarray:
    return table.column(name).to_numpy().astype(dtype, copy=False)
