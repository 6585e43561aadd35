"""Amazon review ratings CSV reader: both column orders, rating / ctr labels, checks, and `recdim prepare`."""

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest

from recdim.cli import main
from recdim.data.errors import DataError
from recdim.data.readers import AmazonReader, BadRowBudget, RawChunk
from recdim.data.schema import LabelKind

ROWS = ["AH2L9G3DQHHAJ,0000000116,4.0,1019865600", "A2IIIDRK3PRRZY,0000000116,1.0,1395619200", "A1,B000X,3.0,1"]


def write(path: Path, lines: List[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def read_all(reader: AmazonReader, chunk_rows: int = 1000, max_bad_rows: int = 0) -> List[RawChunk]:
    return [c for c in reader.chunks(chunk_rows, BadRowBudget(max_bad_rows)) if len(c)]


def test_rating_and_ctr(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings_Books.csv", ROWS)
    reader = AmazonReader(path)
    hint = reader.schema_hint
    assert [f.name for f in hint.fields] == ["user_id", "item_id"] and hint.label == LabelKind.RATING
    assert hint.has_time
    (chunk,) = read_all(reader)
    assert chunk.features["user_id"].tolist() == ["AH2L9G3DQHHAJ", "A2IIIDRK3PRRZY", "A1"]
    assert chunk.features["item_id"].tolist() == ["0000000116", "0000000116", "B000X"]  # leading zeros kept
    assert chunk.label.tolist() == [4.0, 1.0, 3.0] and chunk.time.tolist() == [1019865600, 1395619200, 1]
    (chunk,) = read_all(AmazonReader(path, task="ctr"))
    assert chunk.label.tolist() == [1.0, 0.0] and chunk.lines.tolist() == [1, 2] and chunk.label_filtered == 1
    assert chunk.features["user_id"].tolist() == ["AH2L9G3DQHHAJ", "A2IIIDRK3PRRZY"]


def test_item_first_order(tmp_path: Path) -> None:
    path = write(tmp_path / "Books.csv", ["0000000116,AH2L9G3DQHHAJ,5,1019865600"])
    (chunk,) = read_all(AmazonReader(path, order="item,user,rating,timestamp"))
    assert chunk.features["user_id"].tolist() == ["AH2L9G3DQHHAJ"] and chunk.features["item_id"].tolist() == [
        "0000000116"
    ]
    with pytest.raises(ValueError, match="column order must be one of"):
        AmazonReader(path, order="user,rating,item,timestamp")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad,reason",
    [
        ("A1,B1,6.0,1", "rating: out of range"),
        ("A1,B1,x,1", "rating: expected a finite number"),
        (",B1,4.0,1", "user_id: missing value"),
        ("A1,B1,4.0,1.5", "timestamp: expected an integer"),
        ("A1,B1,4.0", "expected 4 columns, got 3"),
        ("user,item,rating,timestamp", "rating: expected a finite number, got 'rating'"),
    ],
)
def test_malformed_rows(tmp_path: Path, bad: str, reason: str) -> None:
    path = write(tmp_path / "r.csv", [ROWS[0], bad, ROWS[1]])
    with pytest.raises(DataError, match=rf"r\.csv:2: {reason}"):
        read_all(AmazonReader(path))
    chunks = read_all(AmazonReader(path), max_bad_rows=1)
    assert np.concatenate([c.lines for c in chunks]).tolist() == [1, 3]


def test_recdim_prepare_time_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lines = [f"U{i % 6},I{i % 4},{1 + i % 5}.0,{1_400_000_000 + 86400 * i}" for i in range(50)]
    path = write(tmp_path / "ratings_Toys.csv", lines)
    out = tmp_path / "prepared"
    sets = [f"prepare.input={path}", f"prepare.output={out}", "prepare.min_count=1", "prepare.split_by=time"]
    argv = ["prepare", "--set", "prepare.source=amazon", "--set", "prepare.task=ctr"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"]["reader"] == "amazon" and meta["schema"]["label"] == "binary"
    assert meta["dropped_rows"] == {"bad": 0, "label_filtered": 10}  # every rating 3
    assert [meta["splits"][s]["rows"] for s in ("train", "val", "test")] == [32, 4, 4]
