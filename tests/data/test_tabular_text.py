"""Tabular inputs as users have them: string labels through ``label_map``, ISO 8601 time columns."""

import json
from pathlib import Path
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recdim.cli import main
from recdim.config import TabularConfig, TabularFieldConfig
from recdim.config_io import ConfigError, from_dict
from recdim.data.errors import DataError
from recdim.data.readers import BadRowBudget, RawChunk, TabularReader

INCOME = {"<=50K": 0, "<=50K.": 0, ">50K": 1, ">50K.": 1}
FIELDS = (TabularFieldConfig("workclass", "categorical"), TabularFieldConfig("age", "numerical"))


def write(path: Path, lines: List[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def read_all(reader: TabularReader, max_bad_rows: int = 0) -> List[RawChunk]:
    return [c for c in reader.chunks(1000, BadRowBudget(max_bad_rows)) if len(c)]


def test_label_map_strips_and_maps(tmp_path: Path) -> None:
    # adult.data writes ", " between cells; adult.test ends its labels with a period
    path = write(
        tmp_path / "adult.csv", ["age,workclass,income", "39, State-gov, <=50K", "50,Private, >50K.", "1,x,>50K"]
    )
    (chunk,) = read_all(TabularReader(path, TabularConfig(fields=FIELDS, label="income", label_map=INCOME)))
    assert chunk.label.tolist() == [0.0, 1.0, 1.0]
    assert chunk.features["workclass"].tolist() == [" State-gov", "Private", "x"]  # features stay as written


def test_unknown_and_missing_labels_are_errors(tmp_path: Path) -> None:
    cfg = TabularConfig(fields=FIELDS, label="income", label_map={"<=50K": 0, ">50K": 1})
    path = write(tmp_path / "adult.csv", ["age,workclass,income", "39,a,<=50K", "40,b,>50K.", "41,c,"])
    with pytest.raises(
        DataError, match=r"adult\.csv:3: income: unknown label \(label_map has \['<=50K', '>50K'\]\), got '>50K.'"
    ):
        read_all(TabularReader(path, cfg))
    (chunk,) = read_all(TabularReader(path, cfg), max_bad_rows=2)
    assert chunk.lines.tolist() == [2]
    path = write(tmp_path / "b.csv", ["age,workclass,income", "39,a,<=50K", "41,c,"])
    with pytest.raises(DataError, match=r"b\.csv:3: income: missing label"):
        read_all(TabularReader(path, cfg))


def test_label_map_config_checks() -> None:
    with pytest.raises(ValueError, match="binary labels map to 0 or 1"):
        TabularConfig(label_map={"yes": 2})
    with pytest.raises(ValueError, match="distinct non-empty"):
        TabularConfig(label_map={"a": 0, " a": 1})
    assert TabularConfig(label_kind="rating", label_map={"good": 5, "bad": 1}).label_map["good"] == 5
    cfg = from_dict(TabularConfig, {"label": "y", "label_map": {"no": 0, "yes": 1}})
    assert cfg.label_map == {"no": 0.0, "yes": 1.0}
    with pytest.raises(ConfigError, match="label_map.no"):
        from_dict(TabularConfig, {"label_map": {"no": "zero"}})


def test_label_map_on_parquet(tmp_path: Path) -> None:
    table = pa.table({"workclass": ["a", "b"], "age": [1.0, 2.0], "y": pa.array([True, False])})
    pq.write_table(table, tmp_path / "d.parquet")
    cfg = TabularConfig(fields=FIELDS, label="y", label_map={"true": 1, "false": 0})
    (chunk,) = read_all(TabularReader(tmp_path / "d.parquet", cfg))
    assert chunk.label.tolist() == [1.0, 0.0]


def test_iso_time_column(tmp_path: Path) -> None:
    lines = [
        "ts,workclass,age,y",
        "1970-01-02,a,1,0",
        "1970-01-01T00:01:00Z,a,1,1",
        "1970-01-01T03:00:00+02:00,a,1,0",
        " 1970-01-01 00:00:00.5 ,a,1,0",
        "19700101T000010,a,1,0",
        "86400,a,1,0",
    ]
    path = write(tmp_path / "t.csv", lines)
    cfg = TabularConfig(fields=FIELDS, label="y", time_column="ts")  # time_format = "auto"
    (chunk,) = read_all(TabularReader(path, cfg))
    assert chunk.time.tolist() == [86400.0, 60.0, 3600.0, 0.5, 10.0, 86400.0]
    with pytest.raises(DataError, match=r"t\.csv:7: ts: expected an ISO 8601 timestamp, got '86400'"):
        read_all(TabularReader(path, TabularConfig(fields=FIELDS, label="y", time_column="ts", time_format="iso8601")))
    with pytest.raises(DataError, match=r"t\.csv:2: ts: expected a finite number"):
        read_all(TabularReader(path, TabularConfig(fields=FIELDS, label="y", time_column="ts", time_format="number")))


@pytest.mark.parametrize("bad", ["2012-13-01", "yesterday", "2012-02-30T10:00", "nan"])
def test_malformed_iso_time_names_file_and_line(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path / "t.csv", ["ts,workclass,age,y", "2012-03-01,a,1,0", f"{bad},a,1,0"])
    cfg = TabularConfig(fields=FIELDS, label="y", time_column="ts")
    with pytest.raises(DataError, match=r"t\.csv:3: ts: expected a number or an ISO 8601 timestamp"):
        read_all(TabularReader(path, cfg))
    path = write(tmp_path / "m.csv", ["ts,workclass,age,y", ",a,1,0"])
    with pytest.raises(DataError, match=r"m\.csv:2: ts: missing time"):
        read_all(TabularReader(path, cfg))


def test_iso_time_in_parquet_strings_and_timestamps(tmp_path: Path) -> None:
    table = pa.table(
        {
            "workclass": ["a", "b"],
            "age": [1.0, 2.0],
            "y": [0, 1],
            "ts": ["1970-01-01T00:00:05Z", "1970-01-01T00:00:07+00:00"],
            "at": pa.array([5_000_000, 7_000_000], type=pa.timestamp("us", tz="Europe/Berlin")),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    for column in ("ts", "at"):
        cfg = TabularConfig(fields=FIELDS, label="y", time_column=column, time_format="iso8601")
        (chunk,) = read_all(TabularReader(tmp_path / "d.parquet", cfg))
        assert chunk.time.tolist() == [5.0, 7.0]


def test_recdim_prepare_adult_like(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    rows = ["age,workclass,income,signup"]
    for i in range(60):
        label = ">50K" if rng.random() < 0.3 else "<=50K"
        work = ("Private", "State-gov", "Self-emp")[i % 3]
        rows.append(f"{20 + i % 40}, {work}, {label},2012-03-{1 + i % 28:02d}T10:{i:02d}:00Z")
    path = write(tmp_path / "adult.csv", rows)
    out = tmp_path / "prepared"
    config = tmp_path / "adult.toml"
    config.write_text(
        "\n".join(
            [
                "[prepare]",
                'source = "tabular"',
                f'input = "{path}"',
                f'output = "{out}"',
                "min_count = 1",
                'split_by = "time"',
                "[prepare.tabular]",
                'label = "income"',
                'label_map = {"<=50K" = 0, ">50K" = 1}',
                'time_column = "signup"',
                'fields = [{name = "age", kind = "numerical"}, {name = "workclass", kind = "categorical"}]',
            ]
        )
        + "\n"
    )
    assert main(["prepare", "--config", str(config)]) == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["schema"]["label"] == "binary"
    assert meta["prepare"]["tabular"]["label_map"] == {"<=50K": 0.0, ">50K": 1.0}
    assert [meta["splits"][s]["rows"] for s in ("train", "val", "test")] == [48, 6, 6]
    bad = write(tmp_path / "bad.csv", rows[:5] + ["30, Private, >50k,2012-03-01T10:00:00Z"])
    config.write_text(config.read_text().replace(str(path), str(bad)).replace(str(out), str(tmp_path / "o2")))
    assert main(["prepare", "--config", str(config)]) == 1
    assert "bad.csv:6: income: unknown label" in capsys.readouterr().err
