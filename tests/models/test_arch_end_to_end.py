"""Every arch through the commands: ``recdim train`` a few steps on small synthetic data, ``recdim export``
the run, ``recdim predict`` the test split; the served model scores it with the train run's test AUC, so
the arch and its settings survive the artifact."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from recdim.cli import main
from recdim.config import ARCHES

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.toml")
# Small, non-default settings, so that an artifact that lost them would not load.
ARCH_SETS = {
    "mf": ['data.features=["C1", "C2"]'],
    "autoint": ["model.attention_layers=1", "model.attention_heads=1", "model.attention_dim=4"],
    "pnn": ["model.pnn_product=both"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "synthetic"
    assert (
        main(["prepare", "--config", DEMO, "--set", f"prepare.output={out}", "--set", "prepare.synthetic.rows=3000"])
        == 0
    )
    return out


def auc(preds: torch.Tensor, labels: torch.Tensor) -> float:
    pos, neg = preds[labels], preds[~labels]
    return float((pos[:, None] > neg[None, :]).double().mean() + 0.5 * (pos[:, None] == neg[None, :]).double().mean())


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_train_export_predict(arch: str, data: Path, tmp_path: Path) -> None:
    sets = [f"prepare.output={data}", f"model.arch={arch}", "model.embedding_dim=8", "model.mlp=[8]"]
    sets += ["model.bottom_mlp=[8]", "train.epochs=1", "train.max_steps=3", "train.batch_size=256"]
    sets += ["train.embedding_lr=1.0"]  # the demo's SGD rate suits DLRM; LR's one-dim tables saturate under it
    sets += ["train.progress=false", *ARCH_SETS.get(arch, [])]
    args = [a for s in sets for a in ("--set", s)]
    run, model = tmp_path / "train", tmp_path / "model"
    assert main(["train", "--config", DEMO, *args, "--out", str(run)]) == 0
    assert main(["export", "--from", str(run), "--out", str(model)]) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["model"]["arch"] == arch
    shard = sorted((data / "test").glob("*.parquet"))[0]
    assert main(["predict", "--model", str(model), "--input", str(shard), "--out", str(tmp_path / "p.csv")]) == 0
    preds = torch.tensor(pd.read_csv(tmp_path / "p.csv")["prediction"].to_numpy())
    labels = torch.tensor(pd.read_parquet(shard)["label"].to_numpy()).bool()
    results = json.loads((run / "results.json").read_text())
    assert bool(((preds > 0) & (preds < 1)).all())
    assert abs(auc(preds, labels) - results["test"]["auc"]) < 1e-6
