"""``prepare``: vocabularies, counts, splits, shards, meta.json and malformed input."""

import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recdim.config import PrepareConfig, SyntheticConfig, TabularConfig, TabularFieldConfig
from recdim.data.errors import DataError
from recdim.data.preprocess import prepare
from recdim.data.split import RandomSplit

TAB = TabularConfig(
    fields=(
        TabularFieldConfig("cat", "categorical"),
        TabularFieldConfig("bag", "multi_categorical"),
        TabularFieldConfig("num", "numerical"),
    ),
    label="y",
    time_column="ts",
)


def random_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(12)])
    cat = words[np.minimum(rng.zipf(1.6, n) - 1, 11)].astype(object)
    cat[rng.random(n) < 0.1] = ""
    bag = ["|".join(rng.choice(words[:6], rng.integers(0, 4), replace=False)) for _ in range(n)]
    num = rng.choice([-3, -1, 0, 1, 2, 3, 5, 20, 150, 4000], n).astype(object)
    num[rng.random(n) < 0.1] = ""
    return pd.DataFrame({"ts": rng.integers(0, 50, n), "cat": cat, "bag": bag, "num": num, "y": rng.integers(0, 2, n)})


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def tab_cfg(tmp_path: Path, inp: Path, **kw) -> PrepareConfig:
    return PrepareConfig(source="tabular", input=str(inp), output=str(tmp_path / "out"), tabular=TAB, **kw)


def load_split(out: Path, split: str) -> pd.DataFrame:
    meta = json.loads((out / "meta.json").read_text())
    tables = [pq.read_table(out / f).to_pandas() for f in meta["splits"][split]["files"]]
    return pd.concat(tables, ignore_index=True)


def naive_vocab(train: pd.Series, min_count: int, missing: str = "") -> Tuple[Dict[str, int], List[int]]:
    """Ids by descending train count, ties by first appearance; OOV last (counts rare + missing)."""
    counts = train.value_counts(sort=False).sort_values(ascending=False, kind="stable")
    kept = counts[(counts >= min_count) & (counts.index != missing)]
    ids = {v: i for i, v in enumerate(kept.index)}
    oov = int(counts.sum() - kept.sum())
    return ids, kept.tolist() + [oov]


def bucket(v: str) -> str:
    if v == "":
        return "missing"
    x = float(v)
    return f"log{math.floor(math.log(x) ** 2)}" if x > 2 else f"small{math.floor(x)}"


@pytest.mark.parametrize("min_count", [1, 3])
def test_ids_and_counts_match_naive_pandas(tmp_path: Path, min_count: int) -> None:
    raw = random_table().astype(str).replace("nan", "")
    out = prepare(tab_cfg(tmp_path, write_csv(raw, tmp_path / "d.csv"), min_count=min_count, seed=3))
    code = RandomSplit((0.8, 0.1, 0.1), 3).assign(np.arange(2, len(raw) + 2), None)
    train = raw[code == 0]
    meta = json.loads((out / "meta.json").read_text())
    specs = {f["name"]: f for f in meta["schema"]["fields"]}

    cat_ids, cat_counts = naive_vocab(train["cat"], min_count)
    bag_flat = pd.Series([w for b in train["bag"] for w in b.split("|") if w])
    bag_ids, bag_counts = naive_vocab(bag_flat, min_count)
    num_ids, num_counts = naive_vocab(train["num"].map(bucket), min_count, missing="<none>")
    expected = {"cat": (cat_ids, cat_counts), "bag": (bag_ids, bag_counts), "num": (num_ids, num_counts)}
    for name, (ids, counts) in expected.items():
        assert specs[name]["num_embeddings"] == len(ids) + 1 and specs[name]["oov_id"] == len(ids)
        assert np.load(out / "counts" / f"{name}.npy").tolist() == counts, name
        assert sum(counts) == (len(bag_flat) if name == "bag" else len(train))

    for s, split in enumerate(("train", "val", "test")):
        got = load_split(out, split)
        want = raw[code == s]
        assert meta["splits"][split]["rows"] == len(want)
        assert got["cat"].tolist() == [cat_ids.get(v, len(cat_ids)) for v in want["cat"]]
        assert got["num"].tolist() == [num_ids.get(bucket(v), len(num_ids)) for v in want["num"]]
        assert [list(b) for b in got["bag"]] == [
            [bag_ids.get(w, len(bag_ids)) for w in b.split("|") if w] for b in want["bag"]
        ]
        assert got["label"].tolist() == want["y"].astype(float).tolist()


def test_id_order_ties_first_appearance_and_oov(tmp_path: Path) -> None:
    values = ["b", "a", "c", "a", "b", "d", "", "a", "b", "c"]  # a, b: 3 each (b first); c: 2; d: 1
    raw = pd.DataFrame({"ts": 0, "cat": values, "bag": "", "num": 1, "y": 1})
    out = prepare(tab_cfg(tmp_path, write_csv(raw, tmp_path / "d.csv"), min_count=2, split=(1.0, 0.0, 0.0)))
    got = load_split(out, "train")["cat"].tolist()
    assert got == [0, 1, 2, 1, 0, 3, 3, 1, 0, 2]  # b=0, a=1, c=2, d (rare) and "" (missing) -> OOV 3
    assert np.load(out / "counts" / "cat.npy").tolist() == [3, 3, 2, 2]
    assert load_split(out, "val").shape[0] == 0  # empty splits still get a readable shard


def test_dense_and_weighted_numericals(tmp_path: Path) -> None:
    raw = pd.DataFrame({"ts": 0, "cat": "a", "bag": "x", "num": ["", "-2", "0", "3"], "y": [0, 1, 0, 1]})
    inp = write_csv(raw, tmp_path / "d.csv")
    want = [0.0, 0.0, 0.0, math.log(4.0)]
    out = prepare(tab_cfg(tmp_path, inp, numerical="dense", split=(1.0, 0.0, 0.0)))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["schema"]["fields"][2] == {"name": "num", "kind": "dense", "num_embeddings": 0, "oov_id": -1}
    assert not (out / "counts" / "num.npy").exists()
    got = load_split(out, "train")
    assert got["num"].dtype == np.float32 and np.allclose(got["num"], want)
    out = prepare(tab_cfg(tmp_path, inp, numerical="weighted", split=(1.0, 0.0, 0.0)))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["schema"]["fields"][2] == {"name": "num", "kind": "weighted", "num_embeddings": 1, "oov_id": 0}
    assert np.load(out / "counts" / "num.npy").tolist() == [4]
    assert np.allclose(load_split(out, "train")["num"], want)


def tree_bytes(root: Path) -> Dict[str, bytes]:
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != "meta.json"]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.mark.parametrize("source", ["tabular", "synthetic"])
def test_output_independent_of_chunk_rows(tmp_path: Path, source: str) -> None:
    inp = write_csv(random_table(400).astype(str).replace("nan", ""), tmp_path / "d.csv")
    outs = []
    for chunk_rows in (7, 1000):
        cfg = PrepareConfig(
            source=source, input=str(inp), output=str(tmp_path / f"out{chunk_rows}"), tabular=TAB,
            synthetic=SyntheticConfig(
                rows=700, cardinalities=(30, 20), strengths=(1.0, 0.0), ranks=(2, 2), num_dense=2
            ),
            chunk_rows=chunk_rows, rows_per_shard=40, min_count=2,
        )  # fmt: skip
        outs.append(prepare(cfg))
    a, b = (json.loads((o / "meta.json").read_text()) for o in outs)
    assert a["prepare"].pop("chunk_rows") == 7 and b["prepare"].pop("chunk_rows") == 1000
    a["prepare"].pop("output"), b["prepare"].pop("output")
    assert a == b
    assert len(a["splits"]["train"]["files"]) > 1
    assert tree_bytes(outs[0]) == tree_bytes(outs[1])


def test_random_split_fractions_and_seed(tmp_path: Path) -> None:
    lines = np.arange(1, 100_001)
    a = RandomSplit((0.8, 0.1, 0.1), 0).assign(lines, None)
    assert np.allclose(np.bincount(a) / len(lines), [0.8, 0.1, 0.1], atol=0.005)
    assert (RandomSplit((0.8, 0.1, 0.1), 0).assign(lines[500:600], None) == a[500:600]).all()
    assert (RandomSplit((0.8, 0.1, 0.1), 1).assign(lines, None) != a).mean() > 0.2


def test_time_split(tmp_path: Path) -> None:
    raw = random_table(200).astype(str).replace("nan", "")
    raw["t"] = raw["ts"]  # the time column, also kept as a (dense) feature to check the output
    tab = TabularConfig(fields=(TabularFieldConfig("t", "numerical"),), label="y", time_column="ts")
    cfg = PrepareConfig(
        source="tabular", input=str(write_csv(raw, tmp_path / "d.csv")), output=str(tmp_path / "out"),
        tabular=tab, split_by="time", numerical="dense", chunk_rows=13,
    )  # fmt: skip
    out = prepare(cfg)
    meta = json.loads((out / "meta.json").read_text())
    assert [meta["splits"][s]["rows"] for s in ("train", "val", "test")] == [160, 20, 20]
    # rows ranked by (time, line): ranks 0..159 are train, 160..179 val, the rest test; file order kept
    rank = np.empty(len(raw), dtype=int)
    rank[np.lexsort((np.arange(len(raw)), raw["ts"].astype(int).to_numpy()))] = np.arange(len(raw))
    for split, (lo, hi) in zip(("train", "val", "test"), ((0, 160), (160, 180), (180, 200))):
        want = raw[(rank >= lo) & (rank < hi)]
        got = load_split(out, split)
        assert np.allclose(got["t"], np.log1p(want["ts"].astype(float)))
        assert got["label"].tolist() == want["y"].astype(float).tolist()


def test_time_split_needs_time_column(tmp_path: Path) -> None:
    cfg = PrepareConfig(
        source="synthetic", output=str(tmp_path / "o"), split_by="time", synthetic=SyntheticConfig(rows=50)
    )
    with pytest.raises(ValueError, match="time column"):
        prepare(cfg)


def criteo_line(label: str = "1", i1: str = "3", c1: str = "aa") -> str:
    return "\t".join([label, i1] + ["1"] * 12 + [c1] + ["bb"] * 25)


def write_lines(path: Path, lines: List[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def malformed_case(tmp_path: Path, case: str) -> Tuple[PrepareConfig, str]:
    out = str(tmp_path / "out")
    if case == "short_row":
        inp = write_lines(tmp_path / "train.txt", [criteo_line()] * 3 + ["1\t2\t3"])
        return PrepareConfig(source="criteo", input=str(inp), output=out), r"train\.txt:4: expected 40 columns, got 3"
    if case == "non_numeric_int":
        inp = write_lines(tmp_path / "train.txt", [criteo_line(), criteo_line(i1="12a")])
        return PrepareConfig(source="criteo", input=str(inp), output=out), r"train\.txt:2: I1: expected an integer"
    if case == "id_out_of_range":
        write_lines(tmp_path / "ml" / "u.user", ["1|24|M|x|1"])
        write_lines(tmp_path / "ml" / "u.item", ["1|t|d||u|" + "|".join("0" * 19)])
        write_lines(tmp_path / "ml" / "u.data", ["1\t1\t4\t5", "1\t1\t4\t6", "1\t-1\t4\t7"])
        cfg = PrepareConfig(source="movielens", input=str(tmp_path / "ml"), output=out)
        return cfg, r"u\.data:3: item_id: out of range"
    if case == "nan_dense":
        inp = write_lines(tmp_path / "d.csv", ["ts,cat,bag,num,y", "1,a,b,2,1", "1,a,b,NaN,0"])
        cfg = PrepareConfig(source="tabular", input=str(inp), output=out, tabular=TAB, numerical="dense")
        return cfg, r"d\.csv:3: num: expected a finite number"
    assert case == "empty_file"
    inp = write_lines(tmp_path / "train.txt", [])
    return PrepareConfig(source="criteo", input=str(inp), output=out), r"train\.txt:1: no data rows"


@pytest.mark.parametrize("case", ["short_row", "non_numeric_int", "id_out_of_range", "nan_dense", "empty_file"])
def test_malformed_input_names_file_and_line(tmp_path: Path, case: str) -> None:
    cfg, pattern = malformed_case(tmp_path, case)
    with pytest.raises(DataError, match=pattern):
        prepare(cfg)
    assert not Path(cfg.output).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging leftovers


def test_max_bad_rows_skips_and_counts(tmp_path: Path, caplog) -> None:
    lines = [criteo_line(c1=f"v{i % 3}") for i in range(20)]
    lines[4], lines[9] = "1\t2", criteo_line(i1="x")
    inp = write_lines(tmp_path / "train.txt", lines)
    cfg = PrepareConfig(source="criteo", input=str(inp), output=str(tmp_path / "out"), max_bad_rows=2, min_count=1)
    with caplog.at_level("WARNING", logger="recdim"):
        meta = json.loads((prepare(cfg) / "meta.json").read_text())
    skipped = [r.getMessage() for r in caplog.records if "skipping malformed row" in r.getMessage()]
    assert [m.split(": ")[0] for m in skipped] == [f"skipping malformed row {inp}:{n}" for n in (5, 10)]
    assert meta["dropped_rows"] == {"bad": 2, "label_filtered": 0}
    assert sum(s["rows"] for s in meta["splits"].values()) == 18
    with pytest.raises(DataError, match=r"train\.txt:10: I1: .*max_bad_rows=1"):
        prepare(PrepareConfig(source="criteo", input=str(inp), output=str(tmp_path / "o2"), max_bad_rows=1))


def test_output_replaced_only_when_complete(tmp_path: Path) -> None:
    good = write_lines(tmp_path / "train.txt", [criteo_line()] * 5)
    cfg = PrepareConfig(source="criteo", input=str(good), output=str(tmp_path / "out"), min_count=1)
    first = (prepare(cfg) / "meta.json").read_text()
    bad = write_lines(tmp_path / "bad.txt", [criteo_line(), "oops"])
    with pytest.raises(DataError):
        prepare(PrepareConfig(source="criteo", input=str(bad), output=cfg.output))
    assert (tmp_path / "out" / "meta.json").read_text() == first
    six = write_lines(tmp_path / "six.txt", [criteo_line()] * 6)
    out = prepare(PrepareConfig(source="criteo", input=str(six), output=cfg.output))
    meta = json.loads((out / "meta.json").read_text())
    assert sum(s["rows"] for s in meta["splits"].values()) == 6
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a prepared dataset"):
        prepare(PrepareConfig(source="criteo", input=str(six), output=str(tmp_path / "mine")))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_criteo_and_avazu_end_to_end(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "train.txt", [criteo_line(str(i % 2), str(i), f"c{i % 4}") for i in range(40)])
    out = prepare(
        PrepareConfig(source="criteo", input=str(inp), output=str(tmp_path / "c"), min_count=1, numerical="dense")
    )
    meta = json.loads((out / "meta.json").read_text())
    kinds = {f["name"]: f["kind"] for f in meta["schema"]["fields"]}
    assert kinds["I1"] == "dense" and kinds["C1"] == "categorical" and meta["schema"]["label"] == "binary"
    assert meta["source"]["reader"] == "criteo" and meta["format_version"] == 1
    assert sorted(p.stem for p in (out / "counts").iterdir()) == sorted(f"C{i}" for i in range(1, 27))

    rows = ["id,click,hour,C1,site_id"] + [f"{i},{i % 2},141021{i % 24:02d},100{i % 3},s{i % 5}" for i in range(60)]
    inp = write_lines(tmp_path / "avazu.csv", rows)
    out = prepare(
        PrepareConfig(source="avazu", input=str(inp), output=str(tmp_path / "a"), min_count=1, split_by="time")
    )
    meta = json.loads((out / "meta.json").read_text())
    assert [f["name"] for f in meta["schema"]["fields"]] == ["hour", "C1", "site_id", "hour_of_day", "weekday"]
    assert [meta["splits"][s]["rows"] for s in ("train", "val", "test")] == [48, 6, 6]
    assert load_split(out, "test")["hour"].tolist() == [meta["schema"]["fields"][0]["oov_id"]] * 6  # unseen hours


@pytest.mark.parametrize("task,rows,filtered", [("rating", 100_000, 0), ("ctr", 72_855, 27_145)])
def test_movielens_100k(tmp_path: Path, shared_datasets: Path, task: str, rows: int, filtered: int) -> None:
    cfg = PrepareConfig(
        source="movielens", input=str(shared_datasets / "ml-100k"), output=str(tmp_path / task), task=task, min_count=1
    )
    out = prepare(cfg)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == {"reader": "movielens", "input": cfg.input, "variant": "ml-100k"}
    assert meta["schema"]["label"] == ("rating" if task == "rating" else "binary")
    split_rows = [meta["splits"][s]["rows"] for s in ("train", "val", "test")]
    assert sum(split_rows) == rows and abs(split_rows[0] / rows - 0.8) < 0.01
    assert meta["dropped_rows"] == {"bad": 0, "label_filtered": filtered}
    spec = {f["name"]: f for f in meta["schema"]["fields"]}
    assert spec["user_id"]["num_embeddings"] == 944 and spec["gender"]["num_embeddings"] == 3
    assert spec["genres"]["kind"] == "multi_categorical"
    train = load_split(out, "train")
    assert np.load(out / "counts" / "user_id.npy").sum() == split_rows[0]
    assert np.bincount(train["user_id"], minlength=944).tolist() == np.load(out / "counts" / "user_id.npy").tolist()
    labels = set(train["label"].unique())
    assert labels == ({1.0, 2.0, 3.0, 4.0, 5.0} if task == "rating" else {0.0, 1.0})


def test_movielens_100k_time_split(tmp_path: Path, shared_datasets: Path) -> None:
    cfg = PrepareConfig(
        source="movielens", input=str(shared_datasets / "ml-100k"), output=str(tmp_path / "t"), split_by="time"
    )
    meta = json.loads((prepare(cfg) / "meta.json").read_text())
    assert [meta["splits"][s]["rows"] for s in ("train", "val", "test")] == [80_000, 10_000, 10_000]
