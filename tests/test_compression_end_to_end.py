"""Search -> prune -> retrain on tiers -> export -> serve, for every method on DLRM and DeepFM (slow)."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from recdim.config import load
from recdim.data.preprocess import prepare
from recdim.export.predict import predict_file
from recdim.export.retrained import export_retrained, export_step
from recdim.export.serving import load_serving_model
from recdim.prune.run import run_prune
from recdim.retrain.tiers import run_retrain, tiered_session
from recdim.search.run import run_search
from recdim.train.model_io import load_model

ROOT = Path(__file__).resolve().parents[1]
METHOD_SETS = {
    "dnis": ["search.dnis.update_every=2", "prune.crs=[4.0]"],
    "pep": ["search.pep.ramp_steps=40", "prune.crs=[1.6]", "search.pep.granularity=dimension"],
    "autodim": ["search.autodim.candidates=[4, 8, 16]", "search.autodim.update_every=5", "prune.crs=[2.0]"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "synthetic"
    cfg = load(str(ROOT / "configs" / "demo.toml"), (f"prepare.output={out}", "prepare.synthetic.rows=12000"))
    prepare(cfg.prepare)
    return out


def config(data, arch, method, *more):
    sets = [
        f"prepare.output={data}",
        f"model.arch={arch}",
        "train.epochs=2",
        "train.batch_size=256",
        "train.progress=false",
        "train.device=cpu",
        *METHOD_SETS[method],
        *more,
    ]
    return load(str(ROOT / "configs" / "demo.toml"), tuple(sets))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["dlrm", "deepfm"])
@pytest.mark.parametrize("method", ["dnis", "pep", "autodim"])
def test_exported_model_predicts_what_the_retrained_model_predicts(tmp_path, data, method, arch):
    cfg = config(data, arch, method)
    run_search(cfg, tmp_path / "search", method=method)
    pruned = run_prune(cfg, tmp_path / "search", tmp_path / "pruned")
    assert pruned, "no pruned model"
    retrain_cfg = config(data, arch, method, "train.epochs=1", "train.max_steps=15")
    results = run_retrain(retrain_cfg, pruned[0], tmp_path / "retrain", after=[export_step()])
    meta = json.loads((pruned[0] / "prune.json").read_text())
    assert meta["kept"] <= results["params"] <= meta["total"]  # stored values include tier padding

    # The retrained model as training left it (reloaded from its sharded checkpoint) ...
    session, _, _ = tiered_session(retrain_cfg, pruned[0], None)
    load_model(session.dmp, tmp_path / "retrain")
    trained, labels = session.trainer.predict(session.eval_loader("test"))
    # ... and the exported artifact, read back through its manifest and checksums.
    serving = load_serving_model(tmp_path / "retrain" / "export")
    served = torch.cat(
        [serving(b.dense_features, b.sparse_features)[:n].double() for b, n in session.eval_loader("test")]
    )
    assert served.shape == trained.shape == labels.shape
    assert (served - trained).abs().max().item() <= 1e-5
    # The plan's bytes are what the artifact stores.
    manifest = json.loads((tmp_path / "retrain" / "export" / "manifest.json").read_text())
    assert results["bytes"] == results["plan_bytes"]["total"]
    assert manifest is not None
    # `recdim export` of the retrain run rebuilds the same artifact, byte for byte.
    export_retrained(tmp_path / "retrain", tmp_path / "exported")
    first, second = tmp_path / "retrain" / "export", tmp_path / "exported"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    # `recdim predict` on the test shard gives the serving model's probabilities, row for row.
    shards = sorted((data / "test").glob("*.parquet"))
    assert len(shards) == 1  # 12,000 rows: one shard, in the eval loader's row order
    n = predict_file(first, shards[0], tmp_path / "preds.csv")
    preds = torch.tensor(pd.read_csv(tmp_path / "preds.csv")["prediction"].to_numpy())
    assert n == served.numel()
    assert (preds - torch.sigmoid(served)).abs().max().item() <= 1e-6
