"""``recdim predict``: score a file with an exported artifact, from raw rows or from prepared ids.

Two kinds of input:

- **raw rows**, in the format the model's dataset was prepared from (a Criteo / Avazu TSV, a MovieLens
  directory, the tabular CSV / Parquet): read by the same reader with the settings ``prepare`` used,
  and mapped to ids with the vocabularies the artifact carries (rare and unseen values -> the field's
  OOV id, numerical values by the same bucket rule or transform). Every malformed row is an error
  naming its file and line. The output has one row per scored input row: ``line`` (its line in the
  input, so rows a label rule drops, e.g. MovieLens ``ctr``'s rating 3, are visible) and
  ``prediction``.
- **prepared ids** (``docs/data-format.md``), e.g. a shard ``recdim prepare`` wrote: recognised by the
  dataset fingerprint in its Parquet metadata, which must equal the artifact's -- ids from another
  ``prepare`` are refused. A CSV of ids carries no fingerprint, so it is accepted only by an artifact
  whose dataset saved no vocabularies (for any other artifact a CSV is raw rows). The output has one
  ``prediction`` per input row.

Predictions are probabilities for binary labels and ratings otherwise. The output CSV is written to a
temporary sibling and renamed when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recdim.data.loader import EvalLoader
from recdim.data.prepared import arrays_from_table
from recdim.data.readers import BadRowBudget, make_reader
from recdim.data.schema import FieldKind
from recdim.data.vocab_store import FINGERPRINT_KEY
from recdim.export.serving import ServingModel, load_serving_model

RAW_CHUNK_ROWS = 65_536


def read_rows(path: Path, multi_valued: list, separator: str = "|") -> pa.Table:
    """A Parquet file, or a CSV whose multi-valued cells hold ids joined by ``separator``."""
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix != ".csv":
        raise ValueError(f"{path}: expected a .parquet or .csv file of prepared ids")
    table = pacsv.read_csv(
        path, convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in multi_valued})
    )
    for name in multi_valued:
        if name in table.column_names:
            cells = table.column(name).to_pylist()
            try:
                bags = [[int(v) for v in (c or "").split(separator) if v != ""] for c in cells]
            except ValueError as e:
                raise ValueError(f"{path}: column {name!r}: {e}") from e
            table = table.set_column(table.column_names.index(name), name, pa.array(bags, pa.list_(pa.int64())))
    return table


def input_fingerprint(path: Path) -> Optional[str]:
    """The dataset fingerprint a prepared Parquet file carries; None for any other file."""
    if path.suffix != ".parquet" or not path.is_file():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError):
        return None
    value = meta.get(FINGERPRINT_KEY)
    return value.decode() if value is not None else None


def _score(serving: ServingModel, table: pa.Table, where: str, batch_size: int) -> np.ndarray:
    """Predictions [N] float64 for a table of prepared columns."""
    schema = serving.artifact.schema
    data = arrays_from_table(table, schema, serving.features, where)
    preds = [
        serving.predict(batch)[:n_valid].numpy()
        for batch, n_valid in EvalLoader(data, serving.features, batch_size, weighted=schema.is_weighted)
    ]
    return (np.concatenate(preds) if preds else np.zeros(0, np.float32)).astype(np.float64)


def _encoded_tables(serving: ServingModel, path: Path, batch_size: int) -> Iterator[pa.Table]:
    """The output table of a file of prepared ids, after checking its fingerprint."""
    record = serving.artifact.dataset
    got = input_fingerprint(path)
    if record is not None:
        if got is None:
            raise ValueError(
                f"{path}: a CSV of ids carries no dataset fingerprint, and {serving.artifact.path} was trained on a "
                "dataset with saved vocabularies: score the raw rows instead, or a Parquet shard recdim prepare wrote"
            )
        if got != record.fingerprint:
            raise ValueError(
                f"{path}: its ids come from a different prepare (dataset fingerprint {got[:12]}..., the model's is "
                f"{record.fingerprint[:12]}...): score the raw rows, or ids prepared with the model's vocabularies"
            )
    multi = [f for f in serving.features if serving.artifact.schema[f].kind == FieldKind.MULTI_CATEGORICAL]
    table = read_rows(path, multi)
    yield pa.table({"prediction": _score(serving, table, str(path), batch_size)})


def _raw_tables(serving: ServingModel, path: Path, batch_size: int) -> Iterator[pa.Table]:
    """Output tables (``line``, ``prediction``) of raw rows, chunk by chunk."""
    art = serving.artifact
    record = art.dataset
    if record is None:
        raise ValueError(
            f"{path}: not a Parquet file of prepared ids, and {art.path} carries no vocabularies to encode raw rows "
            "(its dataset was prepared without them): re-run recdim prepare, retrain and export, or score prepared ids"
        )
    source = record.prepare.get("source")
    if source == "synthetic":
        raise ValueError(
            f"{path}: {art.path} was trained on the synthetic generator, which has no raw file format; score the "
            "Parquet shards recdim prepare wrote"
        )
    reader = make_reader(record.reader_config(str(path)))
    encoders = record.encoders(art.schema)
    by_name = {e.name: e for e in encoders}
    needed = [*art.schema.dense_names, *serving.features]
    for chunk in reader.chunks(RAW_CHUNK_ROWS, BadRowBudget(0)):
        columns = {name: by_name[name].encode(chunk.features[name]) for name in needed}
        where = f"{chunk.file} (lines {int(chunk.lines[0])}-{int(chunk.lines[-1])})" if len(chunk) else chunk.file
        preds = _score(serving, pa.table(columns), where, batch_size)
        yield pa.table({"line": pa.array(chunk.lines, pa.int64()), "prediction": preds})


def predict_file(
    model_dir: Union[str, Path], input_path: Union[str, Path], out_path: Union[str, Path], batch_size: int = 8192
) -> int:
    """Writes one prediction per input row as CSV (see the module docstring for the two kinds of input).

    Args:
        model_dir: the artifact directory.
        input_path: raw rows in the model's source format, or a Parquet file of prepared ids.
        out_path: the CSV file to write.
        batch_size: rows scored per batch.

    Returns:
        The number of rows scored.

    Example::

        predict_file("models/cr-4", "criteo/day_23.tsv", "preds.csv")
    """
    out = Path(out_path)
    if out.is_dir():
        raise ValueError(f"{out}: is a directory; --out takes the path of the CSV file to write")
    input_path = Path(input_path)
    if not input_path.exists():
        raise FileNotFoundError(f"{input_path}: no such file or directory")
    serving = load_serving_model(model_dir)
    encoded = input_fingerprint(input_path) is not None or (
        serving.artifact.dataset is None and input_path.suffix in (".parquet", ".csv")
    )
    read = _encoded_tables if encoded else _raw_tables
    tables = read(serving, input_path, batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    rows = 0
    writer: Optional[pacsv.CSVWriter] = None
    try:
        for table in tables:
            if writer is None:
                writer = pacsv.CSVWriter(str(tmp), table.schema)
            writer.write_table(table)
            rows += table.num_rows
        if writer is None:  # no rows at all
            pacsv.write_csv(pa.table({"prediction": pa.array([], pa.float64())}), str(tmp))
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if writer is not None:
        writer.close()
    os.replace(tmp, out)
    return rows
