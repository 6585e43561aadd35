"""Decoding rows in the prepared columns: ids must be whole numbers in range; errors name row and column."""

import pyarrow as pa
import pytest

from recdim.data.prepared import arrays_from_table
from recdim.data.schema import FieldKind, FieldSpec, LabelKind, Schema

SCHEMA = Schema(
    fields=(
        FieldSpec("user", FieldKind.CATEGORICAL, 10, 9),
        FieldSpec("tags", FieldKind.MULTI_CATEGORICAL, 5, 4),
        FieldSpec("x", FieldKind.DENSE),
    ),
    label=LabelKind.BINARY,
)


def table(user, tags):
    return pa.table({"user": user, "tags": pa.array(tags, pa.list_(pa.int64())), "x": [0.5] * len(user)})


def test_valid_ids_decode():
    data = arrays_from_table(table([1, 2, 9], [[0, 1], [], [4]]), SCHEMA, ["user", "tags"], "in.csv")
    assert data.sparse["user"].values.tolist() == [1, 2, 9]
    assert data.sparse["tags"].values.tolist() == [0, 1, 4] and data.sparse["tags"].offsets.tolist() == [0, 2, 2, 3]
    # whole floats are ids too (CSV readers may type a column as double)
    data = arrays_from_table(table(pa.array([1.0, 2.0, 3.0]), [[], [], []]), SCHEMA, ["user"], "in.csv")
    assert data.sparse["user"].values.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "user, tags, message",
    [
        (pa.array([1.0, 1.5, 2.0]), [[], [], []], r"in\.csv: row 2, column 'user': id 1\.5 is not a whole number"),
        (pa.array([1.0, float("nan"), 2.0]), [[], [], []], r"row 2, column 'user': id nan is not a whole number"),
        (pa.array([1, None, 2]), [[], [], []], r"row 2, column 'user': id nan is not a whole number"),
        ([1, -1, 2], [[], [], []], r"row 2, column 'user': id -1 is outside \[0, 10\)"),
        ([1, 2, 3], [[0], [1, 2], [7]], r"row 3, column 'tags': id 7 is outside \[0, 5\)"),
        (pa.array(["1", "2", "3"]), [[], [], []], r"column 'user' holds string, not integer ids"),
    ],
)
def test_bad_ids_name_row_and_column(user, tags, message):
    with pytest.raises(ValueError, match=message):
        arrays_from_table(table(user, tags), SCHEMA, ["user", "tags"], "in.csv")
