"""Raw readers: parsing, line numbers, malformed rows and the bad-row budget."""

import gzip
from pathlib import Path
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recdim.config import TabularConfig, TabularFieldConfig
from recdim.data.errors import DataError
from recdim.data.readers import (
    AvazuReader,
    BadRowBudget,
    CriteoReader,
    MovieLensReader,
    RawChunk,
    RawKind,
    RawReader,
    TabularReader,
)
from recdim.data.schema import LabelKind


def read_all(reader: RawReader, chunk_rows: int = 1000, max_bad_rows: int = 0) -> List[RawChunk]:
    return [c for c in reader.chunks(chunk_rows, BadRowBudget(max_bad_rows)) if len(c)]


def criteo_line(label: str = "1", ints: List[str] = None, cats: List[str] = None) -> str:
    ints = ints if ints is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{i:08x}" for i in range(26)]
    return "\t".join([label] + ints + cats)


def write(path: Path, lines: List[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


# --- Criteo -----------------------------------------------------------------------------------------


def test_criteo_parses_values_and_missing(tmp_path: Path) -> None:
    ints = ["5", "", "-1"] + ["0"] * 10
    cats = ["68fd1e64", ""] + ["a"] * 24
    path = write(tmp_path / "train.txt", [criteo_line("1", ints, cats), criteo_line("0")])
    reader = CriteoReader(path)
    hint = reader.schema_hint
    assert [f.name for f in hint.fields][:2] == ["I1", "I2"] and hint.fields[13].name == "C1"
    assert hint.fields[0].kind == RawKind.NUMERICAL and hint.fields[13].kind == RawKind.CATEGORICAL
    assert hint.label == LabelKind.BINARY and not hint.has_time
    (chunk,) = read_all(reader)
    assert chunk.lines.tolist() == [1, 2]
    assert chunk.label.tolist() == [1.0, 0.0]
    assert chunk.features["I1"].tolist() == [5.0, 0.0]
    assert np.isnan(chunk.features["I2"][0]) and chunk.features["I3"][0] == -1
    assert chunk.features["C1"].tolist() == ["68fd1e64", "00000000"]
    assert chunk.features["C2"][0] == ""


def test_criteo_short_row_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "train.txt", [criteo_line(), criteo_line(), "1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12"])
    with pytest.raises(DataError, match=r"train\.txt:3: expected 40 columns, got 12"):
        read_all(CriteoReader(path))


def test_criteo_non_numeric_integer(tmp_path: Path) -> None:
    ints = ["1", "abc"] + ["0"] * 11
    path = write(tmp_path / "train.txt", [criteo_line(), criteo_line(ints=ints)])
    with pytest.raises(DataError, match=r"train\.txt:2: I2: expected an integer, got 'abc'"):
        read_all(CriteoReader(path))


@pytest.mark.parametrize("bad", ["nan", "inf", "1.5"])
def test_criteo_nan_inf_fraction_rejected(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path / "train.txt", [criteo_line(ints=[bad] + ["0"] * 12)])
    with pytest.raises(DataError, match=r"train\.txt:1: I1"):
        read_all(CriteoReader(path))


def test_criteo_bad_label(tmp_path: Path) -> None:
    path = write(tmp_path / "train.txt", [criteo_line("2")])
    with pytest.raises(DataError, match=r"train\.txt:1: label: expected 0 or 1"):
        read_all(CriteoReader(path))


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("")
    with pytest.raises(DataError, match=r"train\.txt:1: no data rows"):
        read_all(CriteoReader(tmp_path / "train.txt"))


def test_blank_lines_skipped_line_numbers_exact(tmp_path: Path) -> None:
    path = write(tmp_path / "train.txt", [criteo_line(), "", criteo_line(), "", criteo_line("7")])
    (chunk,) = read_all(CriteoReader(path), max_bad_rows=1)
    assert chunk.lines.tolist() == [1, 3]
    with pytest.raises(DataError, match=r"train\.txt:5: label"):
        read_all(CriteoReader(path))


def test_bad_row_budget_skips_and_counts(tmp_path: Path) -> None:
    lines = [criteo_line(), "short", criteo_line(ints=["x"] * 13), criteo_line("0")]
    path = write(tmp_path / "train.txt", lines)
    budget = BadRowBudget(2)
    chunks = [c for c in CriteoReader(path).chunks(2, budget) if len(c)]
    assert budget.count == 2
    assert np.concatenate([c.lines for c in chunks]).tolist() == [1, 4]
    with pytest.raises(DataError, match=r"train\.txt:3: .*max_bad_rows=1"):
        read_all(CriteoReader(path), max_bad_rows=1)


def test_chunking_does_not_change_rows(tmp_path: Path) -> None:
    lines = [criteo_line(str(i % 2), ints=[str(i)] * 13) for i in range(23)]
    path = write(tmp_path / "train.txt", lines)
    a = read_all(CriteoReader(path), chunk_rows=4)
    b = read_all(CriteoReader(path), chunk_rows=100)
    assert len(a) == 6 and len(b) == 1
    assert np.concatenate([c.features["I1"].to_numpy() for c in a]).tolist() == b[0].features["I1"].tolist()
    assert np.concatenate([c.lines for c in a]).tolist() == list(range(1, 24))


def test_gzip_crlf_and_invalid_text(tmp_path: Path) -> None:
    body = ("\r\n".join([criteo_line(), criteo_line("0")]) + "\r\n").encode()
    with gzip.open(tmp_path / "train.txt.gz", "wb") as fh:
        fh.write(body)
    (chunk,) = read_all(CriteoReader(tmp_path / "train.txt.gz"))
    assert chunk.label.tolist() == [1.0, 0.0] and chunk.features["C26"].tolist() == ["00000019"] * 2
    path = tmp_path / "bad.txt"
    path.write_bytes((criteo_line() + "\n").encode() + criteo_line(cats=["\xff"] * 26).encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: not valid utf-8 text"):
        read_all(CriteoReader(path))


def test_truncated_gzip_names_the_file_and_line(tmp_path: Path) -> None:
    data = gzip.compress(("\n".join(criteo_line() for _ in range(3000)) + "\n").encode())
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.txt\.gz:\d+: cannot read past this line: .*truncated or corrupt"):
        read_all(CriteoReader(path))


# --- Avazu ------------------------------------------------------------------------------------------

AVAZU_HEADER = "id,click,hour,C1,banner_pos,site_id,device_type,C14"


def test_avazu_fields_and_time(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.csv",
        [AVAZU_HEADER, "10,0,14102100,1005,0,1fbe01fe,1,15706", "11,1,14102213,1002,1,,0,15704"],
    )
    reader = AvazuReader(path)
    names = [f.name for f in reader.schema_hint.fields]
    assert names == ["hour", "C1", "banner_pos", "site_id", "device_type", "C14", "hour_of_day", "weekday"]
    assert reader.schema_hint.has_time
    (chunk,) = read_all(reader)
    assert chunk.lines.tolist() == [2, 3]
    assert chunk.label.tolist() == [0.0, 1.0]
    assert chunk.features["hour_of_day"].tolist() == ["0", "13"]
    assert chunk.features["weekday"].tolist() == ["1", "2"]  # 2014-10-21 was a Tuesday
    assert chunk.features["site_id"].tolist() == ["1fbe01fe", ""]
    assert chunk.time[1] - chunk.time[0] == 24 * 3600 + 13 * 3600


def test_avazu_bad_hour_and_missing_click(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", [AVAZU_HEADER, "1,0,14102100,1,0,a,1,2", "2,0,1410210,1,0,a,1,2"])
    with pytest.raises(DataError, match=r"train\.csv:3: hour: expected YYMMDDHH"):
        read_all(AvazuReader(path))
    path = write(tmp_path / "test.csv", ["id,hour,C1", "1,14102100,1"])
    with pytest.raises(DataError, match=r"test\.csv:1: header has no 'click'"):
        AvazuReader(path)


# --- MovieLens --------------------------------------------------------------------------------------


def make_ml100k(root: Path, ratings: List[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write(root / "u.data", ratings)
    write(root / "u.user", ["1|24|M|technician|85711", "2|53|F|other|94043"])
    flags = lambda on: "|".join("1" if i in on else "0" for i in range(19))  # noqa: E731
    write(
        root / "u.item",
        [f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags({3, 4, 5})}", f"2|Caf\xe9 (1995)|||x|{flags({1})}"],
        encoding="latin-1",
    )
    return root


def test_movielens_100k_layout_rating(tmp_path: Path) -> None:
    root = make_ml100k(tmp_path / "ml", ["1\t1\t5\t100", "2\t2\t3\t50", "1\t3\t1\t70"])
    reader = MovieLensReader(root, task="rating")
    assert reader.source()["variant"] == "ml-100k"
    names = [f.name for f in reader.schema_hint.fields]
    assert names == ["user_id", "item_id", "age", "gender", "occupation", "zip", "genres"]
    assert reader.schema_hint.label == LabelKind.RATING and reader.schema_hint.has_time
    (chunk,) = read_all(reader)
    f = chunk.features
    assert f["user_id"].tolist() == ["1", "2", "1"]
    assert f["age"].tolist() == ["24", "53", "24"] and f["gender"].tolist() == ["M", "F", "M"]
    assert f["genres"][0] == ("Animation", "Children's", "Comedy") and f["genres"][1] == ("Action",)
    assert f["genres"][2] == ()  # item 3 is not in u.item
    assert chunk.label.tolist() == [5.0, 3.0, 1.0] and chunk.time.tolist() == [100, 50, 70]


def test_movielens_ctr_filters_rating_three(tmp_path: Path) -> None:
    root = make_ml100k(tmp_path / "ml", ["1\t1\t5\t100", "2\t2\t3\t50", "1\t2\t2\t70", "2\t1\t4\t1"])
    (chunk,) = read_all(MovieLensReader(root, task="ctr"))
    assert chunk.label.tolist() == [1.0, 0.0, 1.0]
    assert chunk.lines.tolist() == [1, 3, 4] and chunk.label_filtered == 1


@pytest.mark.parametrize("bad", ["-5", "1.5", "x", ""])
def test_movielens_id_out_of_range(tmp_path: Path, bad: str) -> None:
    root = make_ml100k(tmp_path / "ml", ["1\t1\t5\t100", f"{bad}\t1\t5\t100"])
    with pytest.raises(DataError, match=r"u\.data:2: user_id"):
        read_all(MovieLensReader(root))


def test_movielens_bad_side_table_and_rating(tmp_path: Path) -> None:
    root = make_ml100k(tmp_path / "ml", ["1\t1\t6\t100"])
    with pytest.raises(DataError, match=r"u\.data:1: rating: out of range"):
        read_all(MovieLensReader(root))
    root = make_ml100k(tmp_path / "ml2", ["1\t1\t5\t100"])
    write(root / "u.user", ["1|24|M|technician|85711", "0|53|F|other|94043"])
    with pytest.raises(DataError, match=r"u\.user:2: user_id"):
        read_all(MovieLensReader(root))


def test_movielens_1m_and_20m_layouts(tmp_path: Path) -> None:
    m1 = tmp_path / "ml-1m"
    m1.mkdir()
    write(m1 / "ratings.dat", ["1::10::5::978300760", "2::20::2::978302109"])
    write(m1 / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072"])
    write(m1 / "movies.dat", ["10::GoldenEye (1995)::Action|Adventure|Thriller", "20::Heat::Crime"], "latin-1")
    reader = MovieLensReader(m1, task="ctr")
    assert reader.source()["variant"] == "ml-1m"
    (chunk,) = read_all(reader)
    assert chunk.features["age"].tolist() == ["1", "56"] and chunk.features["zip"].tolist() == ["48067", "70072"]
    assert chunk.features["genres"][0] == ("Action", "Adventure", "Thriller")
    assert chunk.label.tolist() == [1.0, 0.0]

    m20 = tmp_path / "ml-20m"
    m20.mkdir()
    write(m20 / "ratings.csv", ["userId,movieId,rating,timestamp", "1,2,3.5,1112486027", "1,29,0.5,1112484676"])
    movies = ['2,"American President, The (1995)",Comedy|Drama', "29,X,(no genres listed)"]
    write(m20 / "movies.csv", ["movieId,title,genres"] + movies)
    reader = MovieLensReader(m20)
    assert [f.name for f in reader.schema_hint.fields] == ["user_id", "item_id", "genres"]
    (chunk,) = read_all(reader)
    assert chunk.features["genres"].tolist() == [("Comedy", "Drama"), ()]
    assert chunk.label.tolist() == [3.5, 0.5] and chunk.lines.tolist() == [2, 3]


def test_movielens_shared_100k(shared_datasets: Path) -> None:
    path = shared_datasets / "ml-100k"
    rows = sum(len(c) for c in read_all(MovieLensReader(path, "rating"), chunk_rows=50_000))
    assert rows == 100_000
    chunks = read_all(MovieLensReader(path, "ctr"), chunk_rows=50_000)
    assert sum(len(c) for c in chunks) == 72_855
    assert sum(c.label_filtered for c in chunks) == 27_145  # `awk '$3 == 3' u.data | wc -l`


# --- Tabular ----------------------------------------------------------------------------------------

TAB_CFG = TabularConfig(
    fields=(
        TabularFieldConfig("city", "categorical"),
        TabularFieldConfig("tags", "multi_categorical", separator=";"),
        TabularFieldConfig("price", "numerical"),
    ),
    label="y",
    label_kind="binary",
    time_column="ts",
)


def test_tabular_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", ["ts,city,tags,price,y,unused", '5,"Paris, FR",a;b,1.5,1,z', "3,,,,0,z"])
    reader = TabularReader(path, TAB_CFG)
    assert reader.schema_hint.has_time and reader.schema_hint.fields[1].kind == RawKind.MULTI_CATEGORICAL
    (chunk,) = read_all(reader)
    assert chunk.features["city"].tolist() == ["Paris, FR", ""]
    assert chunk.features["tags"].tolist() == [("a", "b"), ()]
    assert chunk.features["price"][0] == 1.5 and np.isnan(chunk.features["price"][1])
    assert chunk.time.tolist() == [5.0, 3.0] and chunk.lines.tolist() == [2, 3]


def test_tabular_csv_nan_numeric_and_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", ["ts,city,tags,price,y", "1,a,b,2,1", "2,a,b,nan,1"])
    with pytest.raises(DataError, match=r"d\.csv:3: price: expected a finite number"):
        read_all(TabularReader(path, TAB_CFG))
    path = write(tmp_path / "e.csv", ["ts,city,price,y", "1,a,2,1"])
    with pytest.raises(DataError, match=r"e\.csv:1: no column\(s\) \['tags'\]"):
        TabularReader(path, TAB_CFG)


def test_tabular_parquet(tmp_path: Path) -> None:
    table = pa.table(
        {
            "city": pa.array([3, None, 3], type=pa.int64()),
            "tags": pa.array([["a", "b"], [], None]),
            "price": pa.array([1.0, None, 2.0]),
            "y": pa.array([1, 0, 1], type=pa.int8()),
            "ts": pa.array([10, 20, 30]),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    (chunk,) = read_all(TabularReader(tmp_path / "d.parquet", TAB_CFG))
    assert chunk.features["city"].tolist() == ["3", "", "3"]
    assert chunk.features["tags"].tolist() == [("a", "b"), (), ()]
    assert np.isnan(chunk.features["price"][1]) and chunk.label.tolist() == [1.0, 0.0, 1.0]
    bad = table.set_column(2, "price", pa.array([1.0, float("nan"), 2.0]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet:2: price: expected a finite number"):
        read_all(TabularReader(tmp_path / "bad.parquet", TAB_CFG))


# --- Registry ---------------------------------------------------------------------------------------


def test_make_reader_knows_every_source(tmp_path: Path) -> None:
    from recdim.config import AmazonConfig, MovieLensConfig, PrepareConfig
    from recdim.data.readers import AmazonReader, KDD12Reader, make_reader

    write(tmp_path / "training.txt", ["0\t1\t1\t1\t1\t1\t1\t1\t1\t1\t1\t1"])
    assert isinstance(make_reader(PrepareConfig(source="kdd12", input=str(tmp_path))), KDD12Reader)
    amazon = make_reader(
        PrepareConfig(
            source="amazon",
            input=str(write(tmp_path / "r.csv", ["i,u,5,1"])),
            task="ctr",
            amazon=AmazonConfig(order="item,user,rating,timestamp"),
        )
    )
    assert isinstance(amazon, AmazonReader) and amazon.task == "ctr" and amazon.source()["order"].startswith("item")
    root = make_ml100k(tmp_path / "ml", ["1\t1\t5\t100"])
    cfg = PrepareConfig(source="movielens", input=str(root), movielens=MovieLensConfig(variant="ml-100k"))
    assert make_reader(cfg).source()["variant"] == "ml-100k"
    with pytest.raises(FileNotFoundError, match=r"ratings\.dat: not found"):
        make_reader(PrepareConfig(source="movielens", input=str(root), movielens=MovieLensConfig(variant="ml-1m")))
