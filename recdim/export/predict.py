"""``recdim predict``: score a file of prepared-format rows with an exported artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recdim.data.loader import EvalLoader
from recdim.data.prepared import arrays_from_table
from recdim.data.schema import FieldKind
from recdim.export.serving import load_serving_model


def read_rows(path: Path, multi_valued: list, separator: str = "|") -> pa.Table:
    """A Parquet file, or a CSV whose multi-valued cells hold ids joined by ``separator``."""
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix != ".csv":
        raise ValueError(f"{path}: expected a .parquet or .csv file")
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


def predict_file(
    model_dir: Union[str, Path], input_path: Union[str, Path], out_path: Union[str, Path], batch_size: int = 8192
) -> int:
    """Writes one prediction per input row (probability for binary labels, rating otherwise) as CSV.

    The input holds the prepared dataset's columns (ids already mapped, see ``docs/data-format.md``),
    e.g. a shard of a split written by ``recdim prepare``; ``label`` is optional and ignored.

    Returns:
        The number of rows scored.
    """
    if Path(out_path).is_dir():
        raise ValueError(f"{out_path}: is a directory; --out takes the path of the CSV file to write")
    serving = load_serving_model(model_dir)
    schema = serving.artifact.schema
    multi = [f for f in serving.features if schema[f].kind == FieldKind.MULTI_CATEGORICAL]
    table = read_rows(Path(input_path), multi)
    data = arrays_from_table(table, schema, serving.features, str(input_path))
    preds = []
    for batch, n_valid in EvalLoader(data, serving.features, batch_size, weighted=schema.is_weighted):
        preds.append(serving.predict(batch)[:n_valid].numpy())
    out = np.concatenate(preds) if preds else np.zeros(0, np.float32)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(pa.table({"prediction": out.astype(np.float64)}), str(out_path))
    return int(out.shape[0])
