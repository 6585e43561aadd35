"""QR and hashing baselines end to end through ``run_experiment`` on the small comparison's synthetic data:
the reached CR, finite metrics, the files a run leaves, and a reload that scores test as the run did."""

import json
import math
from pathlib import Path

import pytest

from recdim.config import load
from recdim.layout.dims import budget_for_cr

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "compare_small.toml")


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    from recdim.data.preprocess import prepare

    data = tmp_path_factory.mktemp("qr_hash") / "data"
    sets = (
        f"prepare.output={data}",
        "prepare.synthetic.rows=4000",
        "train.epochs=1",
        "train.max_steps=6",
        "train.batch_size=256",
        "train.progress=false",
        "train.device=cpu",
    )
    cfg = load(CONFIG, sets)
    prepare(cfg.prepare)
    return cfg


@pytest.mark.parametrize("method", ["qr", "hash"])
def test_run_experiment_reaches_the_cr_with_finite_metrics(small_cfg, tmp_path, method):
    from recdim.modules.hashed_embedding import QRCombine
    from recdim.pipeline import run_experiment
    from recdim.retrain.shared_rows import dataset_rows, read_layout, shared_rows_session
    from recdim.train.model_io import load_model

    cfg, cr = small_cfg, 4.0
    rows = dataset_rows(cfg)
    K = cfg.model.embedding_dim
    cell = run_experiment(cfg, method, cr, 0, tmp_path / method)
    uniform = sum(rows.values()) * K
    assert cell["method"] == method and cell["target_cr"] == cr
    assert cell["cr"] >= cr and cell["cr"] == pytest.approx(uniform / cell["params"])
    assert cell["params"] <= budget_for_cr(rows, K, cr)
    assert cell["bytes"] >= 4 * cell["params"] and cell["dims"]["method"] == method
    for split in ("val", "test"):
        assert cell[split] and all(math.isfinite(v) for v in cell[split].values()), cell[split]
    assert 0.0 <= cell["test"]["auc"] <= 1.0

    run = tmp_path / method / "retrain"
    saved = json.loads((run / "results.json").read_text())
    assert saved["prune"]["method"] == method and saved["prune"]["cr"] == cell["cr"]
    assert saved["plan_bytes"]["total"] == saved["bytes"] and saved["prune"]["tiers"] is None
    layouts, meta = read_layout(run)
    assert meta["method"] == method and {s.feature for s in layouts} == set(rows)
    assert all(s.shared for s in layouts if s.num_embeddings > 4)
    # The saved model reloads into the layout it was trained on and scores test as the run did.
    session = shared_rows_session(cfg, layouts, QRCombine(meta["combine"]), None)
    load_model(session.dmp, run)
    test = session.trainer.evaluate(session.eval_loader("test"))
    for k, v in saved["test"].items():
        assert abs(test[k] - v) <= 1e-6, (k, test[k], v)
    # A finished cell is read back, not trained again.
    again = run_experiment(cfg, method, cr, 0, tmp_path / method)
    assert again["test"] == cell["test"] and again["retrain_time_s"] == cell["retrain_time_s"]


def test_assign_is_refused(small_cfg):
    from recdim.search.method import create

    for name in ("qr", "hash"):
        with pytest.raises(ValueError, match="assigns no dimensions"):
            create(name, small_cfg).assign({}, 2.0)
