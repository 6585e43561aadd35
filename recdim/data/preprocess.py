"""``prepare``: raw files -> a prepared dataset (``docs/data-format.md``), streaming in bounded memory.

Passes over the raw source, each reading ``chunk_rows`` rows at a time:

0. (``split_by = "time"`` only) collect every row's timestamp and line number (16 bytes per row)
   and find the cut points of the train / val / test fractions.
1. Count the values of every sparse field on the train split, by 64-bit hash
   (:mod:`recdim.data.vocab`), then build each field's vocabulary: values seen at least
   ``min_count`` times get ids by descending count (ties: first appearance), everything else
   (rare, unseen, missing) the OOV id, which is last.
2. Save every vocabulary (``vocab/<field>.parquet``, :mod:`recdim.data.vocab_store`) and the dataset
   fingerprint, map every row to ids / floats and write Parquet shards per split (each carrying the
   fingerprint in its metadata), then ``counts/<field>.npy`` and ``meta.json``.

Memory bound: about 24 bytes per distinct train value of every sparse field (key, count, first
position; a transient copy while merging a chunk) plus one chunk of raw rows, plus one row group per
split being written (and 16 bytes per row for a time split). The split of a row depends only on
(seed, its line number) or on its timestamp, so the output is the same whatever ``chunk_rows`` is.

The dataset is written into a hidden sibling directory and renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from recdim.config import PrepareConfig
from recdim.config_io import to_dict
from recdim.data.encode import FieldEncoder, make_encoders
from recdim.data.readers import make_reader
from recdim.data.readers.base import BadRowBudget, RawChunk, RawReader
from recdim.data.schema import Schema
from recdim.data.shards import ShardWriter, check_replaceable, staged_output
from recdim.data.split import SPLIT_NAMES, RandomSplit, TimeSplit
from recdim.data.vocab_store import FINGERPRINT_KEY, fingerprint, write_vocabs

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
LABEL_COLUMN = "label"


def _time_split(reader: RawReader, cfg: PrepareConfig) -> TimeSplit:
    """Pass 0: every row's (time, line), then the cut points."""
    times: List[np.ndarray] = []
    lines: List[np.ndarray] = []
    for chunk in reader.chunks(cfg.chunk_rows, BadRowBudget(cfg.max_bad_rows)):
        times.append(chunk.time.astype(np.float64))
        lines.append(chunk.lines.astype(np.int64))
    all_times = np.concatenate(times) if times else np.empty(0)
    all_lines = np.concatenate(lines) if lines else np.empty(0, dtype=np.int64)
    return TimeSplit(all_times, all_lines, cfg.split)


def _make_splitter(reader: RawReader, cfg: PrepareConfig) -> Union[RandomSplit, TimeSplit]:
    if cfg.split_by == "random":
        return RandomSplit(cfg.split, cfg.seed)
    if not reader.schema_hint.has_time:
        raise ValueError(f"split_by='time' needs a time column, and source {cfg.source!r} has none")
    return _time_split(reader, cfg)


def arrow_schema(encoders: Sequence[FieldEncoder]) -> pa.Schema:
    """The Parquet schema of the shards: one column per field, then ``label`` (float32)."""
    fields = [pa.field(e.name, e.arrow_type, nullable=False) for e in encoders]
    return pa.schema(fields + [pa.field(LABEL_COLUMN, pa.float32(), nullable=False)])


def _progress(chunks: Iterator[RawChunk], desc: str, total: Optional[int]) -> Iterator[RawChunk]:
    """``chunks``, with a rows/s progress bar on an interactive terminal."""
    with tqdm(total=total, desc=desc, unit="rows", unit_scale=True, disable=not sys.stderr.isatty()) as bar:
        for chunk in chunks:
            yield chunk
            bar.update(len(chunk))


def _count_pass(
    reader: RawReader,
    cfg: PrepareConfig,
    encoders: Sequence[FieldEncoder],
    splitter: Union[RandomSplit, TimeSplit],
) -> np.ndarray:
    """Pass 1: observe the train rows of every field; returns rows per split."""
    rows = np.zeros(3, dtype=np.int64)
    # The first pass over the input logs the rows it skips (pass 0 when splitting by time).
    budget = BadRowBudget(cfg.max_bad_rows, log_rows=cfg.split_by != "time")
    for chunk in _progress(reader.chunks(cfg.chunk_rows, budget), "prepare: count", None):
        code = splitter.assign(chunk.lines, chunk.time)
        rows += np.bincount(code, minlength=3)
        train = code == 0
        for enc in encoders:
            enc.observe(chunk.features[enc.name][train])
    for enc in encoders:
        enc.finish(cfg.min_count)
    return rows


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"field name {name!r} cannot name a counts file")


def prepare(cfg: PrepareConfig) -> Path:
    """Reads ``cfg.source`` and writes the prepared dataset to ``cfg.output``.

    Args:
        cfg: what to read and how (see :class:`~recdim.config.PrepareConfig`).

    Returns:
        The output directory (complete: meta.json, counts/, train/, val/, test/).

    Raises:
        DataError: malformed input (file and line named), beyond ``cfg.max_bad_rows`` skipped rows.

    Example::

        out = prepare(PrepareConfig(source="movielens", input="../shared/datasets/ml-100k",
                                    output="data/ml100k-rating", min_count=1))
        json.loads((out / "meta.json").read_text())["splits"]["train"]["rows"]
    """
    output = Path(cfg.output)
    check_replaceable(output)
    if cfg.chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {cfg.chunk_rows}")
    reader = make_reader(cfg)
    hint = reader.schema_hint
    encoders = make_encoders(hint.fields, cfg.numerical, cfg.numerical_fields)
    for enc in encoders:
        _check_name(enc.name)
    splitter = _make_splitter(reader, cfg)
    expected_rows = _count_pass(reader, cfg, encoders, splitter)
    if expected_rows.sum() == 0:
        raise ValueError(f"{cfg.input or cfg.source}: no usable rows left to prepare")
    schema = Schema(fields=tuple(e.spec for e in encoders), label=hint.label)
    table_schema = arrow_schema(encoders)

    with staged_output(output) as tmp:
        encodings = write_vocabs(tmp, encoders)
        fingerprint_hex = fingerprint(schema, encodings)
        table_schema = table_schema.with_metadata({FINGERPRINT_KEY: fingerprint_hex.encode()})
        writers = [ShardWriter(tmp, name, table_schema, cfg.rows_per_shard) for name in SPLIT_NAMES]
        budget = BadRowBudget(cfg.max_bad_rows, log_rows=False)
        label_filtered = 0
        for chunk in _progress(reader.chunks(cfg.chunk_rows, budget), "prepare: write", int(expected_rows.sum())):
            label_filtered += chunk.label_filtered
            code = splitter.assign(chunk.lines, chunk.time)
            columns = [enc.encode(chunk.features[enc.name]) for enc in encoders]
            columns.append(pa.array(chunk.label.astype(np.float32), type=pa.float32()))
            table = pa.Table.from_arrays(columns, schema=table_schema)
            for s, writer in enumerate(writers):
                writer.write(table.take(pa.array(np.flatnonzero(code == s))))
        files = [w.close() for w in writers]
        rows = [w.rows for w in writers]
        if rows != expected_rows.tolist():
            raise RuntimeError(
                f"{cfg.input}: rows per split changed between passes "
                f"({expected_rows.tolist()} -> {rows}); was the input modified?"
            )
        (tmp / "counts").mkdir()
        for enc in encoders:
            counts = enc.counts()
            if counts is not None:
                np.save(tmp / "counts" / f"{enc.name}.npy", counts.astype(np.int64))
        meta: Dict[str, object] = {
            "format_version": FORMAT_VERSION,
            "schema": schema.to_json(),
            "splits": {name: {"rows": int(r), "files": f} for name, r, f in zip(SPLIT_NAMES, rows, files)},
            "source": reader.source(),
            "prepare": to_dict(cfg),
            "encodings": encodings,
            "fingerprint": fingerprint_hex,
            "dropped_rows": {"bad": budget.count, "label_filtered": int(label_filtered)},
        }
        meta.update(reader.extra_meta())
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    vocab = ", ".join(f"{f.name}={f.num_embeddings}" for f in schema.fields if f.is_sparse)
    logger.info(
        "prepared %s: rows train=%d val=%d test=%d; %d fields; vocab %s; bad rows %d; label-filtered %d",
        output,
        *rows,
        len(schema.fields),
        vocab or "-",
        budget.count,
        label_filtered,
    )
    return output
