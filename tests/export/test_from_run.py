"""``recdim export --from`` a train run serves the trained uniform model; a search run is a clear error."""

import json
from pathlib import Path

import pandas as pd
import torch

from recdim.cli import main
from recdim.export.serving import load_serving_model

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.toml")


def test_export_from_a_train_run_and_refuse_a_search_run(tmp_path, capsys):
    data = tmp_path / "data"
    sets = ["--set", f"prepare.output={data}", "--set", "prepare.synthetic.rows=4000"]
    train = ["--set", "train.epochs=1", "--set", "train.max_steps=6", "--set", "train.progress=false"]
    # The AUC check below is to 1e-6. After six steps of the demo's SGD every prediction lies in 0.2501-0.2544
    # (413 test rows, 410 distinct values), so float32 rounding between the two scoring paths flips near-ties
    # and moves the AUC by ~1e-5; six row-wise Adagrad steps spread the scores.
    train += ["--set", "train.embedding_optimizer=rowwise_adagrad", "--set", "train.embedding_lr=0.05"]
    assert main(["prepare", "--config", DEMO, *sets]) == 0
    assert main(["train", "--config", DEMO, *sets, *train, "--out", str(tmp_path / "train")]) == 0
    assert main(["export", "--from", str(tmp_path / "train"), "--out", str(tmp_path / "model")]) == 0
    serving = load_serving_model(tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["extra"]["method"] == "uniform" and all(
        [t["width"] for t in e["tiers"]] == [16] for e in manifest["tables"]
    )
    shard = sorted((data / "test").glob("*.parquet"))[0]
    assert (
        main(["predict", "--model", str(tmp_path / "model"), "--input", str(shard), "--out", str(tmp_path / "p.csv")])
        == 0
    )
    preds = torch.tensor(pd.read_csv(tmp_path / "p.csv")["prediction"].to_numpy())
    assert preds.numel() > 0 and bool(((preds > 0) & (preds < 1)).all())
    assert serving.artifact.model.embedding_dim == 16
    # The exported model scores the test split with the train run's test AUC (same model, same rows).
    results = json.loads((tmp_path / "train" / "results.json").read_text())
    labels = torch.tensor(pd.read_parquet(shard)["label"].to_numpy()).bool()
    pos, neg = preds[labels], preds[~labels]
    auc = float((pos[:, None] > neg[None, :]).double().mean() + 0.5 * (pos[:, None] == neg[None, :]).double().mean())
    assert abs(auc - results["test"]["auc"]) < 1e-6 and manifest["extra"]["test"] == results["test"]

    search = tmp_path / "search"
    search.mkdir()
    (search / "results.json").write_text(json.dumps({"search": {"method": "dnis"}, "config": {}}))
    capsys.readouterr()
    assert main(["export", "--from", str(search), "--out", str(tmp_path / "m2")]) == 1
    err = capsys.readouterr().err
    assert "is a dnis search run" in err and "recdim prune --from" in err and "Traceback" not in err
