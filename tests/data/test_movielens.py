"""MovieLens 1M / 10M / 20M layouts: detection, explicit variants, headers, and `recdim prepare` on each."""

import json
from pathlib import Path
from typing import List

import pytest

from recdim.cli import main
from recdim.data.errors import DataError
from recdim.data.readers import BadRowBudget, MovieLensReader, RawChunk
from recdim.data.readers.movielens import detect_layout
from recdim.data.schema import LabelKind


def write(path: Path, lines: List[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def read_all(reader: MovieLensReader, chunk_rows: int = 1000, max_bad_rows: int = 0) -> List[RawChunk]:
    return [c for c in reader.chunks(chunk_rows, BadRowBudget(max_bad_rows)) if len(c)]


def make_ml1m(root: Path, rows: int = 0) -> Path:
    ratings = ["1::10::5::978300760", "2::20::2::978302109", "1::20::3::978301968"]
    ratings += [f"{1 + i % 2}::{10 * (1 + i % 3)}::{1 + i % 5}::{978300000 + i}" for i in range(rows)]
    write(root / "ratings.dat", ratings)
    write(root / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072"])
    movies = ["10::GoldenEye (1995)::Action|Adventure|Thriller", "20::Heat::Crime", "30::Caf\xe9 (1995)::Drama"]
    write(root / "movies.dat", movies, "latin-1")
    return root


def make_ml10m(root: Path, rows: int = 0) -> Path:
    ratings = ["1::122::5::838985046", "1::185::2.5::838983525", "7::122::0.5::838983392"]
    ratings += [f"{1 + i % 4}::{(122, 185)[i % 2]}::{0.5 * (1 + i % 10)}::{838980000 + i}" for i in range(rows)]
    write(root / "ratings.dat", ratings)
    write(root / "movies.dat", ["122::Boomerang (1992)::Comedy|Romance", "185::Net, The (1995)::(no genres listed)"])
    write(root / "tags.dat", ["15::4973::excellent!::1215184630"])  # not read
    return root


def make_ml20m(root: Path, rows: int = 0) -> Path:
    ratings = ["userId,movieId,rating,timestamp", "1,2,3.5,1112486027", "1,29,0.5,1112484676", "2,2,4,1112484580"]
    ratings += [f"{1 + i % 3},{(2, 29)[i % 2]},{0.5 * (1 + i % 10)},{1112480000 + i}" for i in range(rows)]
    write(root / "ratings.csv", ratings)
    movies = ['2,"American President, The (1995)",Comedy|Drama', '29,"City of Lost Children, The",Sci-Fi']
    write(root / "movies.csv", ["movieId,title,genres"] + movies)
    return root


def test_ml1m_user_features_and_genres(tmp_path: Path) -> None:
    reader = MovieLensReader(make_ml1m(tmp_path / "ml-1m"), task="rating")
    assert reader.source()["variant"] == "ml-1m"
    names = [f.name for f in reader.schema_hint.fields]
    assert names == ["user_id", "item_id", "age", "gender", "occupation", "zip", "genres"]
    (chunk,) = read_all(reader)
    f = chunk.features
    assert f["gender"].tolist() == ["F", "M", "F"] and f["age"].tolist() == ["1", "56", "1"]
    assert f["genres"].tolist() == [("Action", "Adventure", "Thriller"), ("Crime",), ("Crime",)]
    assert chunk.label.tolist() == [5.0, 2.0, 3.0] and chunk.time.tolist() == [978300760, 978302109, 978301968]


def test_ml10m_detected_without_users(tmp_path: Path) -> None:
    root = make_ml10m(tmp_path / "ml-10M100K")
    reader = MovieLensReader(root, task="ctr")
    assert reader.source()["variant"] == "ml-10m"
    assert [f.name for f in reader.schema_hint.fields] == ["user_id", "item_id", "genres"]
    assert reader.schema_hint.label == LabelKind.BINARY
    (chunk,) = read_all(reader)
    # 2.5 is neither liked (>= 4) nor disliked (<= 2): dropped and counted
    assert chunk.lines.tolist() == [1, 3] and chunk.label.tolist() == [1.0, 0.0] and chunk.label_filtered == 1
    assert chunk.features["genres"].tolist() == [("Comedy", "Romance"), ("Comedy", "Romance")]
    (chunk,) = read_all(MovieLensReader(root, task="rating"))
    assert chunk.label.tolist() == [5.0, 2.5, 0.5]
    assert chunk.features["genres"][1] == ()  # "(no genres listed)"


def test_ml20m_csv_layout(tmp_path: Path) -> None:
    reader = MovieLensReader(make_ml20m(tmp_path / "ml-20m"))
    assert reader.source()["variant"] == "ml-20m"
    (chunk,) = read_all(reader)
    assert chunk.lines.tolist() == [2, 3, 4] and chunk.label.tolist() == [3.5, 0.5, 4.0]
    assert chunk.features["genres"].tolist() == [("Comedy", "Drama"), ("Sci-Fi",), ("Comedy", "Drama")]


def test_explicit_variant_and_missing_files(tmp_path: Path) -> None:
    root = make_ml1m(tmp_path / "ml-1m")
    # ml-10m on a 1M directory: the same ratings and movies, no user table
    reader = MovieLensReader(root, variant="ml-10m")
    assert reader.source()["variant"] == "ml-10m" and len(reader.schema_hint.fields) == 3
    with pytest.raises(FileNotFoundError, match=r"ratings\.csv: not found \(the ml-20m layout needs it\)"):
        MovieLensReader(root, variant="ml-20m")
    with pytest.raises(ValueError, match="variant must be one of"):
        detect_layout(root, "ml-2m")
    (root / "movies.dat").unlink()
    with pytest.raises(FileNotFoundError, match=r"movies\.dat: not found \(the ml-1m layout needs it\)"):
        MovieLensReader(root)
    with pytest.raises(FileNotFoundError, match="no MovieLens ratings file"):
        MovieLensReader(tmp_path)


def test_ml20m_header_and_malformed_rows(tmp_path: Path) -> None:
    root = make_ml20m(tmp_path / "a")
    write(root / "ratings.csv", ["user,movie,rating,timestamp", "1,2,3.5,1"])
    with pytest.raises(DataError, match=r"ratings\.csv:1: expected the header userId,movieId,rating,timestamp"):
        MovieLensReader(root)
    root = make_ml20m(tmp_path / "b")
    write(root / "ratings.csv", ["userId,movieId,rating,timestamp", "1,2,3.5,1", "1,2,5.5,2", "1,2,3"])
    with pytest.raises(DataError, match=r"ratings\.csv:3: rating: out of range"):
        read_all(MovieLensReader(root))
    chunks = read_all(MovieLensReader(root), max_bad_rows=2)
    assert [c.lines.tolist() for c in chunks] == [[2]]


def test_ml1m_malformed_dat_rows(tmp_path: Path) -> None:
    root = make_ml1m(tmp_path / "ml-1m")
    write(root / "ratings.dat", ["1::10::5::978300760", "1::10::5", "x::10::5::1"])
    with pytest.raises(DataError, match=r"ratings\.dat:2: expected 4 columns, got 3"):
        read_all(MovieLensReader(root))
    write(root / "users.dat", ["1::F::1::10::48067", "1::M::56::16::70072"])
    with pytest.raises(DataError, match=r"users\.dat:2: user_id: duplicate id"):
        read_all(MovieLensReader(root))


@pytest.mark.parametrize("variant,make", [("ml-1m", make_ml1m), ("ml-10m", make_ml10m), ("ml-20m", make_ml20m)])
def test_recdim_prepare(tmp_path: Path, variant: str, make, capsys: pytest.CaptureFixture) -> None:
    root = make(tmp_path / variant, rows=60)
    out = tmp_path / "prepared"
    sets = [f"prepare.input={root}", f"prepare.output={out}", "prepare.min_count=1", "prepare.task=ctr"]
    sets += [f"prepare.movielens.variant={variant}", "prepare.split_by=time"]
    argv = ["prepare", "--set", "prepare.source=movielens"] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"]["variant"] == variant and meta["schema"]["label"] == "binary"
    names = [f["name"] for f in meta["schema"]["fields"]]
    assert ("gender" in names) == (variant == "ml-1m") and names[-1] == "genres"
    rows = sum(s["rows"] for s in meta["splits"].values())
    assert rows + meta["dropped_rows"]["label_filtered"] == 63
