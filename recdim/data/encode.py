"""Field encoders: raw column values -> the prepared column (ids, bags of ids, floats).

Each encoder first :meth:`~FieldEncoder.observe`\\ s the train rows chunk by chunk (counting values by
hash, see :mod:`recdim.data.vocab`), is then :meth:`~FieldEncoder.finish`\\ ed into a vocabulary, and
finally :meth:`~FieldEncoder.encode`\\ s every chunk of every split.

Numerical fields become features in one of three ways (``PrepareConfig.numerical``, or per field
``PrepareConfig.numerical_fields``):

- ``bucketize``: ``v > 2`` -> bucket ``floor(ln(v)^2)``; ``v <= 2`` -> its own category ``floor(v)``;
  missing -> a category ``missing`` of its own. Buckets are then counted and vocab'd like any
  categorical value (so rare buckets fold into the OOV id too).
- ``dense``: a float32 dense feature ``log(1 + max(v, 0))`` (the DLRM Criteo transform: negative
  values clip to 0); missing -> 0.
- ``weighted``: the same ``log(1 + max(v, 0))`` value (missing -> 0) weights the field's single
  embedding (id 0): ``num_embeddings = 1``, ``oov_id = 0``.
"""

from __future__ import annotations

import abc
import itertools
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa

from recdim.data.readers.base import RawField, RawKind
from recdim.data.schema import FieldKind, FieldSpec
from recdim.data.vocab import HashCounter, Vocab, hash_strings, string_keys

#: a raw column of one chunk: a pandas Series (as in ``RawChunk.features``) or a numpy array.
Column = Union[pd.Series, np.ndarray]

_LOG_BUCKET_BASE = np.int64(1 << 53)  # keeps log buckets apart from the small-value categories
_MISSING_CODE = np.int64(-(1 << 62))
_SMALLEST = -float(1 << 52)


def log_transform(values: np.ndarray) -> np.ndarray:
    """``log(1 + max(v, 0))`` as float32, missing (NaN) -> 0.

    Args:
        values: float64 [N].

    Returns:
        float32 [N], finite.

    Example::

        log_transform(np.array([np.nan, -3.0, np.e - 1]))  # [0, 0, 1]
    """
    v = np.nan_to_num(values, nan=0.0)
    return np.log1p(np.maximum(v, 0.0)).astype(np.float32)


def bucket_codes(values: np.ndarray) -> np.ndarray:
    """Integer category of each numerical value (see the module docstring), int64 [N]."""
    missing = np.isnan(values)
    big = values > 2
    safe = np.where(big, values, 3.0)
    log_bucket = np.floor(np.log(safe) ** 2).astype(np.int64) + _LOG_BUCKET_BASE
    small = np.floor(np.clip(np.nan_to_num(values, nan=0.0), _SMALLEST, 2.0)).astype(np.int64)
    codes = np.where(big, log_bucket, small)
    codes[missing] = _MISSING_CODE
    return codes


class FieldEncoder(abc.ABC):
    """Turns one raw column into one prepared column.

    Args:
        name: field name.

    Example::

        enc = CategoricalEncoder("C1")
        enc.observe(train_values); enc.finish(min_count=10)
        ids = enc.encode(values)  # pyarrow int64 array
    """

    kind: FieldKind = FieldKind.CATEGORICAL
    arrow_type: pa.DataType = pa.int64()

    def __init__(self, name: str) -> None:
        self.name = name

    def observe(self, values: Column) -> None:
        """Counts the train rows ``values`` (raw column of one chunk)."""

    def finish(self, min_count: int) -> None:
        """Freezes the vocabulary after all train rows are observed."""

    @property
    @abc.abstractmethod
    def spec(self) -> FieldSpec:
        """The field's schema entry."""

    def counts(self) -> Optional[np.ndarray]:
        """int64 [num_embeddings] train count per id (None for dense fields)."""
        return None

    @abc.abstractmethod
    def encode(self, values: Column) -> pa.Array:
        """The prepared column for raw ``values`` (one chunk, any split)."""


class CategoricalEncoder(FieldEncoder):
    """One string per row -> an id; missing (``""``), rare and unseen values -> the OOV id."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.counter: Optional[HashCounter] = HashCounter()
        self.vocab: Optional[Vocab] = None

    def keys(self, values: Column) -> Tuple[np.ndarray, np.ndarray]:
        """(uint64 keys [N], bool missing [N]) of a raw column."""
        return string_keys(values)

    def observe(self, values: Column) -> None:
        keys, missing = self.keys(values)
        self.counter.add(keys[~missing])
        self.counter.skip(int(missing.sum()))

    def finish(self, min_count: int) -> None:
        self.vocab = self.counter.build(min_count)
        self.counter = None  # frees the per-value counts

    @property
    def spec(self) -> FieldSpec:
        return FieldSpec(self.name, self.kind, self.vocab.num_embeddings, self.vocab.oov_id)

    def counts(self) -> np.ndarray:
        return self.vocab.counts

    def encode(self, values: Column) -> pa.Array:
        keys, missing = self.keys(values)
        ids = self.vocab.lookup(keys)
        ids[missing] = self.vocab.oov_id
        return pa.array(ids, type=pa.int64())


class BucketEncoder(CategoricalEncoder):
    """A numerical value -> its bucket (see :func:`bucket_codes`) -> an id like a categorical value."""

    def keys(self, values: Column) -> Tuple[np.ndarray, np.ndarray]:
        codes = bucket_codes(np.asarray(values, dtype=np.float64))
        return codes.view(np.uint64), np.zeros(len(codes), dtype=bool)


class BagEncoder(FieldEncoder):
    """A bag (tuple of strings) per row -> a list of ids; rare and unseen values -> the OOV id."""

    kind = FieldKind.MULTI_CATEGORICAL
    arrow_type = pa.list_(pa.int64())

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.counter: Optional[HashCounter] = HashCounter()
        self.vocab: Optional[Vocab] = None

    @staticmethod
    def flatten(values: Column) -> Tuple[np.ndarray, np.ndarray]:
        """(uint64 keys of all bag members, int64 bag lengths [N])."""
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        flat = np.fromiter(itertools.chain.from_iterable(values), dtype=object, count=int(lengths.sum()))
        return hash_strings(flat), lengths

    def observe(self, values: Column) -> None:
        self.counter.add(self.flatten(values)[0])

    def finish(self, min_count: int) -> None:
        self.vocab = self.counter.build(min_count)
        self.counter = None

    @property
    def spec(self) -> FieldSpec:
        return FieldSpec(self.name, self.kind, self.vocab.num_embeddings, self.vocab.oov_id)

    def counts(self) -> np.ndarray:
        return self.vocab.counts

    def encode(self, values: Column) -> pa.Array:
        keys, lengths = self.flatten(values)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(self.vocab.lookup(keys), type=pa.int64()))


class DenseEncoder(FieldEncoder):
    """A numerical value -> a float32 dense feature ``log(1 + max(v, 0))`` (missing -> 0)."""

    kind = FieldKind.DENSE
    arrow_type = pa.float32()

    @property
    def spec(self) -> FieldSpec:
        return FieldSpec(self.name, self.kind)

    def encode(self, values: Column) -> pa.Array:
        return pa.array(log_transform(np.asarray(values, dtype=np.float64)), type=pa.float32())


class WeightedEncoder(DenseEncoder):
    """A numerical value -> the float32 weight ``log(1 + max(v, 0))`` of the field's one embedding."""

    kind = FieldKind.WEIGHTED

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.rows = 0

    def observe(self, values: Column) -> None:
        self.rows += len(values)

    @property
    def spec(self) -> FieldSpec:
        return FieldSpec(self.name, self.kind, num_embeddings=1, oov_id=0)

    def counts(self) -> np.ndarray:
        return np.array([self.rows], dtype=np.int64)


_NUMERICAL = {"bucketize": BucketEncoder, "dense": DenseEncoder, "weighted": WeightedEncoder}


def make_encoder(field: RawField, numerical: str) -> FieldEncoder:
    """The encoder of a raw field; ``numerical`` (``bucketize`` / ``dense`` / ``weighted``) picks how
    numerical fields become features.

    Example::

        make_encoder(RawField("I1", RawKind.NUMERICAL), "dense")  # DenseEncoder("I1")
    """
    if field.kind == RawKind.CATEGORICAL:
        return CategoricalEncoder(field.name)
    if field.kind == RawKind.MULTI_CATEGORICAL:
        return BagEncoder(field.name)
    if numerical not in _NUMERICAL:
        raise ValueError(f"numerical must be one of {sorted(_NUMERICAL)}, got {numerical!r}")
    return _NUMERICAL[numerical](field.name)


def make_encoders(
    fields: Sequence[RawField], numerical: str, numerical_fields: Optional[Mapping[str, str]] = None
) -> List[FieldEncoder]:
    """The encoders of a source's raw fields, each numerical field by its own mode.

    Args:
        fields: the raw fields (the reader's schema hint).
        numerical: the mode of numerical fields not in ``numerical_fields``.
        numerical_fields: ``{field: mode}`` overrides.

    Raises:
        ValueError: an override naming a field the source lacks or a field that is not numerical, or an
            unknown mode.

    Example::

        make_encoders(hint.fields, "bucketize", {"I1": "weighted"})  # I1 weighted, I2..I13 bucketized
    """
    overrides = dict(numerical_fields or {})
    kinds = {f.name: f.kind for f in fields}
    for name in overrides:
        if name not in kinds:
            raise ValueError(f"prepare.numerical_fields: {name!r} is not a field of this source; fields: {list(kinds)}")
        if kinds[name] != RawKind.NUMERICAL:
            raise ValueError(f"prepare.numerical_fields: {name!r} is a {kinds[name].value} field, not a numerical one")
    return [make_encoder(f, overrides.get(f.name, numerical)) for f in fields]
