"""What an artifact keeps of the dataset its model was trained on: enough to encode raw rows again.

An artifact exported from a dataset that saved its vocabularies (:mod:`recdim.data.vocab_store`)
carries, under the manifest's ``"dataset"`` key, the dataset fingerprint, the reader settings of
``prepare`` (source, task, numerical rule, tabular schema; paths dropped) and every field's encoding,
and the vocabulary files themselves at the same relative paths (``vocab/<field>.parquet``), each
covered by the manifest's size + sha256 like every other file. Reading checks that the fingerprint
recomputes from the schema and encodings, and every vocabulary's content against its digest.

Example::

    record = DatasetRecord.from_prepared(PreparedDataset("data/criteo"))
    record.encoders(schema)          # FieldEncoders that map raw columns to the model's ids
    record.reader_config("new.tsv")  # the PrepareConfig whose reader parses new raw rows
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

from recdim.config import PrepareConfig
from recdim.config_io import from_dict
from recdim.data.encode import FieldEncoder
from recdim.data.prepared import PreparedDataset
from recdim.data.schema import Schema
from recdim.data.vocab import Vocab
from recdim.data.vocab_store import (
    VocabError,
    fingerprint,
    parse_vocab,
    read_dataset_vocabs,
    saved_encoders,
    vocab_bytes,
)

# prepare settings that describe the machine, not how raw rows are parsed or encoded
_NOT_READER = ("input", "output", "chunk_rows", "rows_per_shard", "max_bad_rows", "split", "split_by", "seed")


@dataclass(frozen=True, eq=False)
class DatasetRecord:
    """The encoding of a prepared dataset, as an artifact carries it.

    Args:
        fingerprint: the dataset fingerprint (sha256 hex).
        prepare: ``prepare``'s reader settings (``PrepareConfig`` as a dict, without paths).
        encodings: ``{field: encoding record}`` (see :mod:`recdim.data.vocab_store`).
        vocabs: ``{field: Vocab}`` for every field whose encoding names a file.
    """

    fingerprint: str
    prepare: Mapping[str, Any]
    encodings: Mapping[str, Mapping[str, Any]]
    vocabs: Mapping[str, Vocab]

    @staticmethod
    def from_prepared(ds: PreparedDataset) -> Optional["DatasetRecord"]:
        """The record of a prepared dataset; None when it saved no vocabularies (an older ``prepare``)."""
        if ds.fingerprint is None or "encodings" not in ds.meta:
            return None
        encodings = ds.meta["encodings"]
        if fingerprint(ds.schema, encodings) != ds.fingerprint:
            raise VocabError(f"{ds.path / 'meta.json'}: fingerprint does not match its schema and encodings")
        prepare = {k: v for k, v in ds.meta.get("prepare", {}).items() if k not in _NOT_READER}
        return DatasetRecord(ds.fingerprint, prepare, encodings, read_dataset_vocabs(ds.path, encodings))

    def files(self) -> Dict[str, bytes]:
        """``{relative path: Parquet bytes}`` of every vocabulary, to store in the artifact."""
        return {self.encodings[f]["file"]: vocab_bytes(v) for f, v in self.vocabs.items()}

    def to_manifest(self) -> Dict[str, Any]:
        """The manifest section (the files are listed in the manifest's ``files``)."""
        return {"fingerprint": self.fingerprint, "prepare": dict(self.prepare), "encodings": dict(self.encodings)}

    @staticmethod
    def from_manifest(section: Mapping[str, Any], schema: Schema, read: Callable[[str], bytes]) -> "DatasetRecord":
        """Parses and verifies a manifest's ``"dataset"`` section.

        Args:
            section: the section.
            schema: the artifact's schema.
            read: relative path -> the file's verified bytes.

        Raises:
            VocabError: a fingerprint that does not recompute, a vocabulary that does not match.
        """
        encodings = section["encodings"]
        if fingerprint(schema, encodings) != section["fingerprint"]:
            raise VocabError("dataset fingerprint does not match the schema and encodings")
        vocabs = {}
        for name, record in encodings.items():
            if "file" in record:
                vocabs[name] = parse_vocab(read(record["file"]), record, record["file"])
        return DatasetRecord(section["fingerprint"], section["prepare"], encodings, vocabs)

    def encoders(self, schema: Schema) -> List[FieldEncoder]:
        """Finished encoders, one per schema field, that map raw columns to the model's ids."""
        return saved_encoders(schema, self.encodings, self.vocabs)

    def reader_config(self, input_path: str) -> PrepareConfig:
        """The ``PrepareConfig`` whose reader parses raw rows at ``input_path`` the way ``prepare`` did
        (every malformed row is an error naming its file and line)."""
        return from_dict(PrepareConfig, {**self.prepare, "input": input_path}, source="artifact dataset record")
