"""Fair tuning (``compare.tune``): every method runs the same settings, the cell keeps the best on
validation, records the chosen values, and a shared search exists once per setting."""

import json
from pathlib import Path

import pytest

from recdim.compare.report import aggregate, load_records
from recdim.compare.runner import run_compare
from recdim.compare.tune import tune_grid
from recdim.config import Config
from recdim.config.compare import CompareConfig
from recdim.config_io import ConfigError, from_dict


class LrExperiment:
    """Validation AUC peaks at embedding_lr 0.03 while test AUC rises with the lr: choosing by test would
    pick 0.1. Records (method, lr, l2, search_dir) per call."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg, method, cr, seed, out_dir, search_dir=None):
        lr, l2 = cfg.train.embedding_lr, cfg.train.embedding_l2
        self.calls.append((method, lr, l2, None if search_dir is None else str(search_dir)))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        val = 0.80 - abs(lr - 0.03) - l2
        return {
            "method": method,
            "cr": cr,
            "seed": seed,
            "val": {"auc": val, "logloss": 0.5},
            "test": {"auc": 0.70 + lr, "logloss": 0.5},
            "params": int(1000 / cr),
            "bytes": int(4000 / cr),
            "uniform_params": 1000,
            "search_time_s": 1.0,
            "retrain_time_s": 2.0,
            "dims": {},
        }


def test_tune_grid_is_the_product_in_key_order():
    grid = tune_grid({"train.embedding_lr": [0.03, 0.1], "train.embedding_l2": [0.0, 1e-6]})
    assert [s.label for s in grid] == ["tune0", "tune1", "tune2", "tune3"]
    assert [dict(s.values) for s in grid][1] == {"train.embedding_l2": 0.0, "train.embedding_lr": 0.1}
    assert grid[3].overrides == ["train.embedding_l2=1e-06", "train.embedding_lr=0.1"]
    assert grid[3].describe() == "embedding_l2=1e-06, embedding_lr=0.1"
    assert tune_grid({}) == []


@pytest.mark.parametrize(
    "tune, match",
    [
        ({"train.seed": [0, 1]}, "train.seed names the cell"),
        ({"model.embedding_dim": [16, 32]}, "model.embedding_dim names the cell"),
        ({"prepare.min_count": [1, 3]}, "prepare.min_count names the cell"),
        ({"embedding_lr": [0.1]}, "not a dotted config key"),
        ({"train.embedding_lr": []}, "non-empty list"),
        ({"train.embedding_lr": [0.1, 0.1]}, "duplicates"),
    ],
)
def test_compare_tune_is_validated(tune, match):
    with pytest.raises(ValueError, match=match):
        CompareConfig(tune=tune)


def test_an_unknown_tuned_key_fails_before_any_cell_runs(tmp_path):
    cmp = CompareConfig(methods=("ue",), budgets=(2.0,), output=str(tmp_path), tune={"train.embedding_rate": [0.1]})
    fake = LrExperiment()
    with pytest.raises(ConfigError, match="embedding_rate"):
        run_compare(Config(), compare=cmp, experiment=fake, prepare=False, progress=False)
    assert fake.calls == []


def test_each_method_tunes_on_validation_and_records_the_choice(tmp_path):
    tune = {"train.embedding_lr": [0.01, 0.03, 0.1], "train.embedding_l2": [0.0, 0.001]}
    cmp = CompareConfig(methods=("ue", "dnis"), budgets=(2.0, 4.0), seeds=(0,), output=str(tmp_path), tune=tune)
    fake = LrExperiment()
    run_compare(Config(), compare=cmp, experiment=fake, prepare=False, progress=False)
    assert len(fake.calls) == 2 * 2 * 6  # every method x budget runs every setting
    settings = {(lr, l2) for lr in (0.01, 0.03, 0.1) for l2 in (0, 0.001)}
    assert {(c[1], c[2]) for c in fake.calls if c[0] == "ue"} == settings
    # DNIS's budget-free search is shared by both budgets, one search directory per setting.
    dirs = {c[3] for c in fake.calls if c[0] == "dnis"}
    assert dirs == {str(tmp_path / "runs" / "dlrm" / "searches" / f"dnis-seed0-tune{i}") for i in range(6)}
    records, _ = load_records(tmp_path)
    for rec in records:
        t = rec["tuning"]
        # val peaks at lr 0.03, l2 0; test would pick lr 0.1: the choice is validation's.
        assert t["chosen_values"] == {"train.embedding_l2": 0.0, "train.embedding_lr": 0.03}
        assert t["chosen"] == "embedding_l2=0, embedding_lr=0.03" and t["metric"] == "auc"
        assert len(t["candidates"]) == 6 and len(t["values"]) == 6
        assert rec["result"]["test"]["auc"] == pytest.approx(0.73)
        # search time: every setting's search and retraining, less the chosen run's retraining
        assert rec["result"]["search_time_s"] == pytest.approx(6 * 3.0 - 2.0)
    rows = aggregate(records)
    assert all(r["tuned"] == ["embedding_l2=0, embedding_lr=0.03"] for r in rows)
    assert "tuned (per seed)" in (tmp_path / "compare.md").read_text()


def test_tuning_resumes_finished_settings(tmp_path):
    tune = {"train.embedding_lr": [0.01, 0.03]}
    cmp = CompareConfig(methods=("ue",), budgets=(2.0,), seeds=(0,), output=str(tmp_path), tune=tune)
    run_compare(Config(), compare=cmp, experiment=LrExperiment(), prepare=False, progress=False)
    cell = tmp_path / "runs" / "dlrm/cr2/ue/seed0"
    (cell / "cell.json").unlink()
    (cell / "tune" / "tune1" / "setting.json").unlink()
    again = LrExperiment()
    run_compare(Config(), compare=cmp, experiment=again, prepare=False, progress=False)
    assert [c[1] for c in again.calls] == [0.03]
    saved = json.loads((cell / "tune" / "tune0" / "setting.json").read_text())
    assert saved["setting"] == {"label": "tune0", "values": {"train.embedding_lr": 0.01}}


def test_tune_reads_from_toml_form():
    cfg = from_dict(Config, {"compare": {"tune": {"train.embedding_lr": [0.03, 0.1]}}})
    assert cfg.compare.tune == {"train.embedding_lr": (0.03, 0.1)}
