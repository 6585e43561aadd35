"""KDD Cup 2012 track 2 reader: columns, the Click > 0 label, checks, streaming, and `recdim prepare`."""

import gzip
import json
from pathlib import Path
from typing import List

import numpy as np
import pytest

from recdim.cli import main
from recdim.config import PrepareConfig
from recdim.data.errors import DataError
from recdim.data.readers import BadRowBudget, KDD12Reader, RawChunk, make_reader
from recdim.data.readers.kdd12 import FIELDS
from recdim.data.schema import LabelKind


def row(
    click: int = 0, shown: int = 1, depth: int = 2, pos: int = 1, user: str = "490234", ad: str = "20157098"
) -> str:
    cols = [click, shown, "4298118681424644510", ad, 27961, depth, pos, 2255103, 317, 48989, 44771, user]
    return "\t".join(str(c) for c in cols)


def write(path: Path, lines: List[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def read_all(reader: KDD12Reader, chunk_rows: int = 1000, max_bad_rows: int = 0) -> List[RawChunk]:
    return [c for c in reader.chunks(chunk_rows, BadRowBudget(max_bad_rows)) if len(c)]


def test_fields_label_and_64_bit_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "training.txt", [row(0, 1), row(2, 5, user="0"), row(1, 1, depth=3, pos=3)])
    reader = KDD12Reader(tmp_path)  # a directory holding training.txt
    hint = reader.schema_hint
    assert [f.name for f in hint.fields] == list(FIELDS) and len(FIELDS) == 10
    assert hint.label == LabelKind.BINARY and not hint.has_time
    (chunk,) = read_all(reader)
    assert chunk.label.tolist() == [0.0, 1.0, 1.0] and chunk.lines.tolist() == [1, 2, 3]
    assert chunk.features["DisplayURL"][0] == "4298118681424644510"  # kept exactly, beyond 2^53
    assert chunk.features["UserID"].tolist() == ["490234", "0", "490234"]
    assert chunk.features["Position"].tolist() == ["1", "1", "3"] and chunk.file == str(path)


@pytest.mark.parametrize(
    "bad,reason",
    [
        (row(3, 2), "Click: more clicks than impressions"),
        (row(0, 0), "Impression: out of range"),
        (row(0, 1, depth=2, pos=3), "Position: greater than Depth"),
        (row(0, 1, depth=0, pos=0), "Depth: out of range"),
        (row(0, 1, ad="-7"), "AdID: expected a non-negative integer id"),
        (row(0, 1, user=""), "UserID: expected a non-negative integer id"),
        (row(0, 1).replace("\t", " ", 1), "expected 12 columns, got 11"),
        ("1.5" + row(0, 2)[1:], "Click: expected an integer"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, bad: str, reason: str) -> None:
    write(tmp_path / "training.txt", [row(), row(1, 2), bad, row()])
    with pytest.raises(DataError, match=rf"training\.txt:3: {reason}"):
        read_all(KDD12Reader(tmp_path / "training.txt"))
    chunks = read_all(KDD12Reader(tmp_path / "training.txt"), max_bad_rows=1)
    assert np.concatenate([c.lines for c in chunks]).tolist() == [1, 2, 4]


def test_streams_in_chunks_and_reads_gzip(tmp_path: Path) -> None:
    lines = [row(i % 3, 4, user=str(i)) for i in range(25)]
    plain = write(tmp_path / "training.txt", lines)
    (tmp_path / "gz").mkdir()
    with gzip.open(tmp_path / "gz" / "training.txt.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    whole = read_all(KDD12Reader(plain))[0]
    for reader in (KDD12Reader(plain), KDD12Reader(tmp_path / "gz")):
        chunks = read_all(reader, chunk_rows=7)
        assert [len(c) for c in chunks] == [7, 7, 7, 4]
        assert np.concatenate([c.label for c in chunks]).tolist() == whole.label.tolist()
    with pytest.raises(FileNotFoundError, match="training file not found"):
        make_reader(PrepareConfig(source="kdd12", input=str(tmp_path / "nothing")))


def test_recdim_prepare(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write(tmp_path / "training.txt", [row(i % 2, 2, pos=1 + i % 2, user=str(i % 7)) for i in range(50)])
    out = tmp_path / "prepared"
    config = tmp_path / "kdd12.toml"
    config.write_text(f'[prepare]\nsource = "kdd12"\ninput = "{tmp_path}"\noutput = "{out}"\nmin_count = 1\n')
    assert main(["prepare", "--config", str(config)]) == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == {"reader": "kdd12", "input": str(tmp_path / "training.txt")}
    assert [f["name"] for f in meta["schema"]["fields"]] == list(FIELDS) and meta["schema"]["label"] == "binary"
    assert sum(s["rows"] for s in meta["splits"].values()) == 50
    spec = {f["name"]: f for f in meta["schema"]["fields"]}
    assert spec["UserID"]["num_embeddings"] == 8 and spec["Position"]["num_embeddings"] == 3  # values + OOV
