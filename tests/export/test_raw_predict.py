"""``recdim predict`` on raw rows: the saved vocabularies map a raw Criteo TSV exactly as ``prepare`` did,
unseen values go to the OOV id, and ids from another ``prepare`` or a tampered vocabulary are refused."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recdim.cli import main
from recdim.config import PrepareConfig
from recdim.data.prepared import PreparedDataset
from recdim.data.split import RandomSplit
from recdim.export.artifact import ArtifactError, read_artifact
from recdim.export.predict import _score, predict_file
from recdim.export.serving import load_serving_model

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.toml")


def _criteo_tsv(path: Path, rows: int, seed: int, vocab: int = 30) -> None:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        ints = ["" if rng.random() < 0.1 else str(int(rng.integers(0, 50))) for _ in range(13)]
        cats = ["" if rng.random() < 0.05 else f"{int(rng.integers(0, vocab)):08x}" for _ in range(26)]
        label = str(int(rng.random() < 0.3 + 0.4 * (cats[0] < "00000008")))
        lines.append("\t".join([label, *ints, *cats]))
    path.write_text("\n".join(lines) + "\n")


def _prepare_sets(tsv: Path, out: Path, min_count: int) -> list:
    values = ["source=criteo", f"input={tsv}", f"output={out}", "numerical=bucketize", f"min_count={min_count}"]
    return [a for v in values for a in ("--set", f"prepare.{v}")]


@pytest.fixture(scope="module")
def criteo_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("raw")
    tsv = tmp / "train.txt"
    _criteo_tsv(tsv, 1200, seed=0)
    sets = _prepare_sets(tsv, tmp / "data", min_count=3)
    train = ["--set", "train.epochs=1", "--set", "train.max_steps=4", "--set", "train.progress=false"]
    assert main(["prepare", "--config", DEMO, *sets]) == 0
    assert main(["train", "--config", DEMO, *sets, *train, "--out", str(tmp / "train")]) == 0
    assert main(["export", "--from", str(tmp / "train"), "--out", str(tmp / "model")]) == 0
    return tmp, sets


def test_raw_rows_score_like_their_prepared_ids(criteo_model):
    tmp, _ = criteo_model
    out = tmp / "raw.csv"
    n = predict_file(tmp / "model", tmp / "train.txt", out)
    raw = pd.read_csv(out)
    assert n == 1200 and list(raw.columns) == ["line", "prediction"] and raw["line"].tolist() == list(range(1, 1201))
    # The train split's rows, in line order, are the train shard's rows: the same ids, the same scores.
    ds = PreparedDataset(tmp / "data")
    cfg = PrepareConfig(**{k: v for k, v in ds.meta["prepare"].items() if k in ("split", "seed")})
    train_lines = np.flatnonzero(RandomSplit(cfg.split, cfg.seed).assign(np.arange(1, 1201), None) == 0) + 1
    shards = sorted((tmp / "data" / "train").glob("*.parquet"))
    assert len(shards) == 1
    predict_file(tmp / "model", shards[0], tmp / "ids.csv")
    from_ids = pd.read_csv(tmp / "ids.csv")["prediction"].to_numpy()
    from_raw = raw.set_index("line").loc[train_lines, "prediction"].to_numpy()
    np.testing.assert_allclose(from_raw, from_ids, rtol=0, atol=1e-6)


def test_unseen_values_map_to_the_oov_id(criteo_model):
    tmp, _ = criteo_model
    unseen = tmp / "unseen.txt"
    row = "\t".join(["1", *["" for _ in range(13)], *[f"ffff{i:04x}" for i in range(26)]])
    unseen.write_text(row + "\n")
    predict_file(tmp / "model", unseen, tmp / "unseen.csv")
    got = pd.read_csv(tmp / "unseen.csv")["prediction"].to_numpy()
    serving = load_serving_model(tmp / "model")
    schema = serving.artifact.schema
    enc = {e.name: e for e in serving.artifact.dataset.encoders(schema)}
    columns = {f: pa.array([schema[f].oov_id], pa.int64()) for f in serving.features if f.startswith("C")}
    # missing numerical values take the "missing" bucket's id (its own category, not the OOV id)
    columns.update({f: enc[f].encode(np.array([np.nan])) for f in serving.features if f.startswith("I")})
    ref = _score(serving, pa.table(columns), "reference", 16)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_ids_from_another_prepare_and_csv_ids_are_refused(criteo_model, capsys):
    tmp, _ = criteo_model
    _criteo_tsv(tmp / "other.txt", 1200, seed=1, vocab=40)
    other = _prepare_sets(tmp / "other.txt", tmp / "other", min_count=3)
    assert main(["prepare", "--config", DEMO, *other]) == 0
    shard = sorted((tmp / "other" / "test").glob("*.parquet"))[0]
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp / "model"), "--input", str(shard), "--out", str(tmp / "x.csv")]) == 1
    err = capsys.readouterr().err
    assert "different prepare" in err and "Traceback" not in err and not (tmp / "x.csv").exists()
    ids = tmp / "ids.csv"
    pd.read_parquet(sorted((tmp / "data" / "test").glob("*.parquet"))[0]).to_csv(ids, index=False)
    assert main(["predict", "--model", str(tmp / "model"), "--input", str(ids), "--out", str(tmp / "y.csv")]) == 1
    err = capsys.readouterr().err
    assert str(ids) in err and "Traceback" not in err and not (tmp / "y.csv").exists()


def test_a_tampered_vocabulary_is_refused(criteo_model, tmp_path):
    tmp, _ = criteo_model
    import shutil

    art = tmp_path / "model"
    shutil.copytree(tmp / "model", art)
    manifest = json.loads((art / "manifest.json").read_text())
    rel = manifest["dataset"]["encodings"]["C1"]["file"]
    data = bytearray((art / rel).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / rel).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="C1.parquet"):
        read_artifact(art)


def test_a_synthetic_model_has_no_raw_format(tmp_path, capsys):
    data = tmp_path / "data"
    sets = ["--set", f"prepare.output={data}", "--set", "prepare.synthetic.rows=3000"]
    train = ["--set", "train.epochs=1", "--set", "train.max_steps=2", "--set", "train.progress=false"]
    assert main(["prepare", "--config", DEMO, *sets]) == 0
    assert main(["train", "--config", DEMO, *sets, *train, "--out", str(tmp_path / "train")]) == 0
    assert main(["export", "--from", str(tmp_path / "train"), "--out", str(tmp_path / "model")]) == 0
    assert read_artifact(tmp_path / "model").dataset.fingerprint == PreparedDataset(data).fingerprint
    raw = tmp_path / "rows.txt"
    raw.write_text("0\t1\n")
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(raw), "--out", str(tmp_path / "p")]) == 1
    assert "synthetic generator" in capsys.readouterr().err
