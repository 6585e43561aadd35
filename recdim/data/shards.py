"""Writing Parquet shards of fixed size, and publishing an output directory all at once.

:class:`ShardWriter` buffers rows and writes row groups of a fixed size, so the files depend only on
the rows, never on how the input was chunked. :func:`staged_output` builds the dataset in a hidden
sibling directory and renames it into place only when complete: a failure never leaves a
half-written dataset that looks finished, and a previous dataset is replaced only by a complete one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP_ROWS = 65_536


class ShardWriter:
    """Writes one split as ``<root>/<split>/part-NNNNN.parquet`` shards of ``rows_per_shard`` rows.

    Args:
        root: dataset directory.
        split: split name (``train`` / ``val`` / ``test``).
        schema: Arrow schema of every shard.
        rows_per_shard: rows per shard (the last one may be shorter).

    Example::

        writer = ShardWriter(tmp, "train", schema, rows_per_shard=1_000_000)
        writer.write(table)
        files = writer.close()  # ["train/part-00000.parquet", ...]
    """

    def __init__(self, root: Path, split: str, schema: pa.Schema, rows_per_shard: int) -> None:
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        self.root = root
        self.split = split
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.group_rows = min(ROW_GROUP_ROWS, rows_per_shard)
        self.rows = 0
        self.files: List[str] = []
        self._pending: List[pa.Table] = []
        self._pending_rows = 0
        self._writer: Optional[pq.ParquetWriter] = None
        self._in_shard = 0
        (root / split).mkdir(parents=True, exist_ok=True)

    def write(self, table: pa.Table) -> None:
        """Appends rows (their schema must equal ``schema``)."""
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        self._drain(final=False)

    def _next_piece(self) -> int:
        return min(self.group_rows, self.rows_per_shard - self._in_shard)

    def _drain(self, final: bool) -> None:
        while self._pending_rows >= self._next_piece() or (final and self._pending_rows > 0):
            size = min(self._next_piece(), self._pending_rows)
            pending = pa.concat_tables(self._pending)
            piece, rest = pending.slice(0, size), pending.slice(size)
            self._pending = [rest] if rest.num_rows else []
            self._pending_rows = rest.num_rows
            self._write_group(piece)

    def _write_group(self, piece: pa.Table) -> None:
        if self._writer is None:
            name = f"{self.split}/part-{len(self.files):05d}.parquet"
            self.files.append(name)
            self._writer = pq.ParquetWriter(self.root / name, self.schema)
        self._writer.write_table(piece.combine_chunks(), row_group_size=piece.num_rows)
        self._in_shard += piece.num_rows
        if self._in_shard >= self.rows_per_shard:
            self._writer.close()
            self._writer = None
            self._in_shard = 0

    def close(self) -> List[str]:
        """Flushes the rest and returns the shard paths relative to ``root``.

        A split without rows still gets one empty shard, so that its schema can be read.
        """
        self._drain(final=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self.files:
            name = f"{self.split}/part-00000.parquet"
            pq.write_table(self.schema.empty_table(), self.root / name)
            self.files.append(name)
        return list(self.files)


def check_replaceable(output: Path) -> None:
    """Raises unless ``output`` is absent, an empty directory, or a prepared dataset (has meta.json).

    This keeps ``prepare`` from ever replacing a directory that is not its own.
    """
    if not output.exists():
        return
    if not output.is_dir():
        raise FileExistsError(f"{output}: exists and is not a directory")
    if (output / "meta.json").is_file() or not any(output.iterdir()):
        return
    raise FileExistsError(f"{output}: exists and is not a prepared dataset (no meta.json); refusing to replace it")


@contextlib.contextmanager
def staged_output(output: Path) -> Iterator[Path]:
    """Yields a hidden sibling directory to write into; on success it replaces ``output`` atomically.

    Args:
        output: final dataset directory.

    Returns:
        A context manager yielding the staging directory. On an exception the staging directory is
        removed and ``output`` is left untouched.

    Example::

        with staged_output(Path("data/ml100k")) as tmp:
            (tmp / "meta.json").write_text("{}")
    """
    check_replaceable(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = output.parent / f".{output.name}.partial-{tag}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = output.parent / f".{output.name}.old-{tag}"
    if output.exists():
        check_replaceable(output)
        os.replace(output, old)
    try:
        os.replace(tmp, output)
    except BaseException:
        if old.exists():
            os.replace(old, output)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
