"""Saved vocabularies: each sparse field's raw value -> id map on disk, and the dataset fingerprint.

``prepare`` writes, beside the shards::

    <dataset>/vocab/<field>.parquet     key uint64 (sorted), id int64   one row per value with an id

and records in ``meta.json``::

    "encodings": {field: {"kind": "string" | "bucket" | "bag" | "dense" | "weighted", "oov_id": int,
                          "num_embeddings": int, "file": "vocab/<field>.parquet", "sha256": ...}}
    "fingerprint": "<sha256 hex>"

A key is the 64-bit hash of the raw value (:func:`recdim.data.vocab.hash_strings`: pandas' SipHash with
its fixed default key, so the same string always gives the same key); for ``bucket`` fields it is the
bucket code of :func:`recdim.data.encode.bucket_codes` (the bucket edges are that fixed rule: ``v > 2``
-> ``floor(ln(v)^2)``, else ``floor(v)``, missing its own code). Every key not in the file -- rare,
unseen or missing values -- maps to ``oov_id``. ``dense`` and ``weighted`` fields have no file (their
transform, ``log(1 + max(v, 0))``, is fixed).

The fingerprint is the sha256 of the schema, the encodings and the content digest of every vocabulary
(keys and ids, not the Parquet bytes). Every shard ``prepare`` writes carries it in its Parquet
metadata (:data:`FINGERPRINT_KEY`), and an exported artifact carries it with the vocabulary files, so
ids prepared by a different ``prepare`` are refused instead of silently scoring the wrong rows.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recdim.data.encode import (
    BagEncoder,
    BucketEncoder,
    CategoricalEncoder,
    DenseEncoder,
    FieldEncoder,
    WeightedEncoder,
)
from recdim.data.schema import Schema
from recdim.data.vocab import Vocab

VOCAB_DIR = "vocab"
#: Parquet schema-metadata key holding the fingerprint of the dataset a shard's ids come from.
FINGERPRINT_KEY = b"recdim.fingerprint"
HASH_RULE = "pandas-siphash64-v1"

# Most specific class first: BucketEncoder is a CategoricalEncoder, WeightedEncoder a DenseEncoder.
_KINDS = (
    (BucketEncoder, "bucket"),
    (CategoricalEncoder, "string"),
    (BagEncoder, "bag"),
    (WeightedEncoder, "weighted"),
    (DenseEncoder, "dense"),
)
_CLASSES = {kind: cls for cls, kind in _KINDS}
_VOCAB_SCHEMA = pa.schema([pa.field("key", pa.uint64(), nullable=False), pa.field("id", pa.int64(), nullable=False)])


class VocabError(ValueError):
    """A saved vocabulary is missing, malformed or does not match its record."""


def encoder_kind(enc: FieldEncoder) -> str:
    """The saved name of an encoder's kind (``string``, ``bucket``, ``bag``, ``dense``, ``weighted``)."""
    for cls, kind in _KINDS:
        if isinstance(enc, cls):
            return kind
    raise TypeError(f"field {enc.name}: no saved form for encoder {type(enc).__name__}")


def vocab_digest(vocab: Vocab) -> str:
    """sha256 of a vocabulary's content (sorted keys, then ids, little-endian)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(vocab.keys, dtype="<u8").tobytes())
    h.update(np.ascontiguousarray(vocab.ids, dtype="<i8").tobytes())
    return h.hexdigest()


def vocab_bytes(vocab: Vocab) -> bytes:
    """The Parquet file of a vocabulary (columns ``key``, ``id``)."""
    table = pa.Table.from_arrays(
        [pa.array(vocab.keys, pa.uint64()), pa.array(vocab.ids, pa.int64())], schema=_VOCAB_SCHEMA
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def parse_vocab(data: bytes, record: Mapping[str, Any], where: str) -> Vocab:
    """The vocabulary in Parquet bytes ``data``, checked against its ``encodings`` record.

    Raises:
        VocabError: unreadable file, wrong columns, unsorted or duplicate keys, ids that are not a
            permutation of ``0..V-1``, a size or content digest other than the record's.
    """
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise VocabError(f"{where}: not a readable Parquet file: {e}") from e
    if table.schema.names != ["key", "id"] or table.schema.types != [pa.uint64(), pa.int64()]:
        raise VocabError(f"{where}: expected columns key uint64, id int64, got {table.schema}")
    keys = table.column("key").to_numpy().astype(np.uint64, copy=False)
    ids = table.column("id").to_numpy().astype(np.int64, copy=False)
    V = int(record["oov_id"])
    if len(keys) != V or int(record["num_embeddings"]) != V + 1:
        raise VocabError(f"{where}: {len(keys)} values, the record says oov_id {V}")
    if V and (np.any(keys[1:] <= keys[:-1]) or not np.array_equal(np.sort(ids), np.arange(V))):
        raise VocabError(f"{where}: keys must be sorted and distinct, ids a permutation of 0..{V - 1}")
    vocab = Vocab(keys=keys, ids=ids, counts=np.zeros(V + 1, dtype=np.int64))
    if vocab_digest(vocab) != record["sha256"]:
        raise VocabError(f"{where}: content does not match its recorded digest (edited or replaced)")
    return vocab


def write_vocabs(root: Path, encoders: Sequence[FieldEncoder]) -> Dict[str, Dict[str, Any]]:
    """Writes ``<root>/vocab/<field>.parquet`` for every field with a vocabulary; returns the encodings.

    Args:
        root: the dataset directory being written.
        encoders: every field's finished encoder, in schema order.

    Returns:
        ``{field: {"kind", "oov_id", "num_embeddings", "file", "sha256"}}`` (``file`` / ``sha256`` only for
        fields with a vocabulary), JSON-ready.

    Example::

        encodings = write_vocabs(tmp, encoders)  # after every encoder is finished
    """
    (root / VOCAB_DIR).mkdir(exist_ok=True)
    out: Dict[str, Dict[str, Any]] = {}
    for enc in encoders:
        record: Dict[str, Any] = {"kind": encoder_kind(enc)}
        spec = enc.spec
        if spec.is_sparse:
            record.update(oov_id=spec.oov_id, num_embeddings=spec.num_embeddings)
        vocab = getattr(enc, "vocab", None)
        if vocab is not None:
            rel = f"{VOCAB_DIR}/{enc.name}.parquet"
            (root / rel).write_bytes(vocab_bytes(vocab))
            record.update(file=rel, sha256=vocab_digest(vocab), hash=HASH_RULE)
        out[enc.name] = record
    return out


def fingerprint(schema: Schema, encodings: Mapping[str, Mapping[str, Any]]) -> str:
    """sha256 hex of the schema and every field's encoding (vocabulary content digests included)."""
    doc = {"schema": schema.to_json(), "encodings": encodings}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def saved_encoders(
    schema: Schema, encodings: Mapping[str, Mapping[str, Any]], vocabs: Mapping[str, Vocab]
) -> List[FieldEncoder]:
    """Finished encoders rebuilt from saved encodings, one per schema field, ready to ``encode`` raw columns.

    Args:
        schema: the dataset schema.
        encodings: ``meta.json``'s ``encodings``.
        vocabs: ``{field: Vocab}`` for every field whose encoding names a file.

    Example::

        encoders = saved_encoders(ds.schema, ds.meta["encodings"], {f: read_vocab(ds.path, ...) ...})
    """
    encoders: List[FieldEncoder] = []
    for spec in schema.fields:
        if spec.name not in encodings:
            raise VocabError(f"field {spec.name}: no saved encoding")
        record = encodings[spec.name]
        kind = record.get("kind")
        if kind not in _CLASSES:
            raise VocabError(f"field {spec.name}: unknown encoding kind {kind!r}")
        enc = _CLASSES[kind](spec.name)
        if "file" in record:
            if spec.name not in vocabs:
                raise VocabError(f"field {spec.name}: vocabulary {record['file']} not loaded")
            enc.counter = None
            enc.vocab = vocabs[spec.name]
        if enc.spec != spec:
            raise VocabError(f"field {spec.name}: saved encoding gives {enc.spec}, the schema says {spec}")
        encoders.append(enc)
    return encoders


def read_dataset_vocabs(root: Path, encodings: Mapping[str, Mapping[str, Any]]) -> Dict[str, Vocab]:
    """Every vocabulary a prepared dataset at ``root`` saved, verified against ``encodings``."""
    out: Dict[str, Vocab] = {}
    for name, record in encodings.items():
        if "file" not in record:
            continue
        rel = Path(record["file"])
        if rel.is_absolute() or ".." in rel.parts:
            raise VocabError(f"{root / 'meta.json'}: vocabulary file {str(rel)!r} lies outside the dataset")
        path = root / rel
        if not path.is_file():
            raise VocabError(f"{path}: missing (listed in {root / 'meta.json'})")
        out[name] = parse_vocab(path.read_bytes(), record, str(path))
    return out
