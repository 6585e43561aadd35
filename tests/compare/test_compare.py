"""The comparison harness with a fake ``run_experiment``: aggregation, resume, selection, outputs."""

import dataclasses
import json
from pathlib import Path

import pytest

from recdim.compare.grid import Cell, cell_config, expand_grid
from recdim.compare.report import aggregate, cell_values, load_records, mean_std
from recdim.compare.runner import run_compare
from recdim.compare.select import choose_best
from recdim.config import Config, DataConfig
from recdim.config.compare import CompareConfig
from recdim.config_io import ConfigError, from_dict, load_toml

REPO = Path(__file__).resolve().parents[2]

# Deterministic fake numbers: test AUC = base[method] + cr-term + seed-term, so means and stds are known.
BASE = {"ue": 0.70, "mde": 0.72}


class FakeExperiment:
    """Records its calls and returns deterministic results (``val`` and ``test`` differ on purpose)."""

    def __init__(self, fail=()):
        self.calls = []
        self.fail = set(fail)

    def __call__(self, cfg, method, cr, seed, out_dir):
        self.calls.append((method, cfg.model.arch, cr, seed, cfg.train.seed, cfg.train.epochs))
        if method in self.fail:
            raise RuntimeError(f"{method} broke")
        out_dir.mkdir(parents=True, exist_ok=True)
        base, _, arg = method.partition("@")
        if base == "random":
            i = int(arg)
            val_auc, test_auc = 0.60 + 0.01 * i * (-1) ** i, 0.65 - 0.01 * i  # sample 2 best on val
        elif base == "ue" and arg:
            val_auc, test_auc = 0.60 + 0.001 * int(arg), 0.61
        else:
            val_auc = test_auc = BASE[base] - 0.01 * cr + 0.002 * seed
        params = int(1000 / cr)
        return {
            "method": method,
            "cr": cr,
            "seed": seed,
            "val": {"auc": val_auc, "logloss": 0.5},
            "test": {"auc": test_auc, "logloss": 0.5 + 0.01 * seed},
            "params": params,
            "bytes": 4 * params + 100,
            "uniform_params": 1000,
            "search_time_s": 1.0,
            "retrain_time_s": 2.0 + seed,
            "dims": {},
        }


def small_compare(tmp_path, **kw):
    fields = dict(methods=("ue", "mde"), budgets=(2.0, 4.0), seeds=(0, 1), output=str(tmp_path / "cmp"), epochs=1)
    fields.update(kw)
    return CompareConfig(**fields)


def test_grid_expansion_and_cell_configs():
    cmp = CompareConfig(
        methods=("ue", "random@3"),
        arches=("fm", "dlrm"),
        budgets=(2.0, 2.5),
        seeds=(0, 1),
        epochs=3,
        overrides=("train.batch_size=64",),
        arch_overrides={"dlrm": ("model.bottom_mlp=[8]",)},
    )
    cells = expand_grid(cmp, "deepfm")
    assert len(cells) == 2 * 2 * 2 * 2 and len({c.run_id for c in cells}) == len(cells)
    assert cells[0].run_id == "fm/cr2/ue/seed0" and Cell("random@3", "fm", 2.5, 1).run_id == "fm/cr2.5/random@3/seed1"
    cfg = cell_config(Config(), cmp, Cell("ue", "dlrm", 2.0, 1))
    assert (cfg.model.arch, cfg.train.seed, cfg.train.epochs, cfg.train.batch_size) == ("dlrm", 1, 3, 64)
    assert cfg.model.bottom_mlp == (8,)
    assert cell_config(Config(), cmp, Cell("ue", "fm", 2.0, 0)).model.bottom_mlp == Config().model.bottom_mlp
    assert expand_grid(CompareConfig(), "mf")[0].arch == "mf"
    with pytest.raises(ConfigError):
        cell_config(Config(), cmp, Cell("ue", "transformer", 2.0, 0))
    with pytest.raises(ConfigError):
        cell_config(Config(), dataclasses.replace(cmp, overrides=("train.nope=1",)), Cell("ue", "fm", 2.0, 0))


@pytest.mark.parametrize(
    "bad",
    [
        dict(methods=("magic",)),
        dict(methods=("mde@2",)),
        dict(budgets=(0.5,)),
        dict(seeds=()),
        dict(methods=("ue", "ue")),
        dict(select_metric="f1"),
        dict(methods=("ue", "ue+wide")),  # a variant without an entry
        dict(variants={"ue": ("train.lr=0.1",)}),  # not <method>+<tag>
        dict(variants={"magic+x": ("train.lr=0.1",)}),
        dict(variants={"ue+x": ("train.lr",)}),
        dict(variants={"ue+x": ()}),
    ],
)
def test_compare_config_validates(bad):
    with pytest.raises(ValueError):
        CompareConfig(**bad)


def test_aggregation_outputs_and_resume(tmp_path, capsys):
    cmp = small_compare(tmp_path)
    fake = FakeExperiment()
    s = run_compare(Config(), compare=cmp, experiment=fake, prepare=False, progress=False)
    assert (s.cells, s.ran, s.skipped, s.failed) == (8, 8, 0, {})
    assert {c[4] for c in fake.calls} == {0, 1} and {c[5] for c in fake.calls} == {1}  # seed and epochs reach cfg
    out = Path(cmp.output)
    data = json.loads((out / "compare.json").read_text())
    rows = {(r["method"], r["cr"]): r for r in data["rows"]}
    assert len(rows) == 4 and data["primary_metric"] == {"dlrm": "test.auc"}
    r = rows[("mde", 2.0)]
    # seeds 0, 1: 0.72 - 0.02 + {0, 0.002} -> mean 0.701, sample std 0.002 / sqrt(2)
    assert r["n"] == 2 and r["stats"]["test.auc"]["mean"] == pytest.approx(0.701)
    assert r["stats"]["test.auc"]["std"] == pytest.approx(0.002 / 2**0.5)
    assert r["stats"]["retrain_time_s"]["mean"] == pytest.approx(2.5)
    assert r["stats"]["params"]["mean"] == 500 and r["stats"]["params"]["std"] == 0
    assert r["stats"]["cr_stored"]["mean"] == pytest.approx(2.0) and "cr_kept" not in r["stats"]
    assert [(m, c) for m, c in rows] == [("ue", 2.0), ("mde", 2.0), ("ue", 4.0), ("mde", 4.0)]
    md = (out / "compare.md").read_text()
    assert "| mde | 2 | 2 | 0.7010 ± 0.0014 |" in md and "compare.png" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Resume: finished cells are skipped; a removed cell runs again, alone.
    (out / "runs" / "dlrm/cr4/mde/seed1" / "cell.json").unlink()
    again = FakeExperiment()
    s2 = run_compare(Config(), compare=cmp, experiment=again, prepare=False, progress=False)
    assert (s2.ran, s2.skipped) == (1, 7) and again.calls == [("mde", "dlrm", 4.0, 1, 1, 1)]
    assert json.loads((out / "compare.json").read_text())["rows"] == data["rows"]
    # Everything finished: nothing runs, no experiment is even needed.
    s3 = run_compare(Config(), compare=cmp, experiment=None, prepare=False, progress=False)
    assert (s3.ran, s3.skipped) == (0, 8)
    assert "different config" not in capsys.readouterr().err
    changed = dataclasses.replace(Config(), train=dataclasses.replace(Config().train, lr=0.1))
    run_compare(changed, compare=cmp, experiment=None, prepare=False, progress=False)
    assert "different config" in capsys.readouterr().err


def test_random_search_selects_on_validation_and_resumes_candidates(tmp_path):
    cfg = from_dict(Config, {"search": {}})
    cmp = small_compare(tmp_path, methods=("random",), budgets=(2.0,), seeds=(0,))
    fake = FakeExperiment()
    run_compare(cfg, compare=cmp, experiment=fake, prepare=False, progress=False)
    assert [c[0] for c in fake.calls] == [f"random@{i}" for i in range(8)]  # BaselineConfig().random_samples
    rec, _ = load_records(cmp.output)
    sel = rec[0]["selection"]
    # val auc 0.60 + 0.01 i (-1)^i: best at the largest even i = 6; its test auc (0.59) is reported even
    # though random@0 has the best test auc (0.65): test is never used to choose.
    assert sel["chosen"] == "random@6" and sel["metric"] == "auc" and len(sel["candidates"]) == 8
    assert rec[0]["result"]["test"]["auc"] == pytest.approx(0.59) and rec[0]["result"]["method"] == "random"
    assert rec[0]["result"]["search_time_s"] == pytest.approx(8 * 3.0)  # every candidate's search + retrain
    assert aggregate(rec)[0]["chosen"] == ["random@6"]
    # A crash after some candidates: the finished ones are reused.
    cell_dir = Path(cmp.output) / "runs" / "dlrm/cr2/random/seed0"
    (cell_dir / "cell.json").unlink()
    (cell_dir / "candidates" / "random@5" / "candidate.json").unlink()
    again = FakeExperiment()
    run_compare(cfg, compare=cmp, experiment=again, prepare=False, progress=False)
    assert [c[0] for c in again.calls] == ["random@5"]


def test_grid_search_reads_row_counts_from_the_dataset(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "schema": {
                    "label": "binary",
                    "fields": [
                        {"name": "user", "kind": "categorical", "num_embeddings": 100, "oov_id": 99},
                        {"name": "item", "kind": "categorical", "num_embeddings": 300, "oov_id": 299},
                    ],
                },
            }
        )
    )
    cfg = dataclasses.replace(Config(), data=DataConfig(path=str(data)))
    cmp = small_compare(tmp_path, methods=("grid",), budgets=(2.0,), seeds=(0,))
    fake = FakeExperiment()
    run_compare(cfg, compare=cmp, experiment=fake, prepare=False, progress=False)
    assert [c[0] for c in fake.calls] == ["ue@4", "ue@8"]  # K = 16 at CR 2: 4 and 8 fit
    rec, _ = load_records(cmp.output)
    assert rec[0]["selection"]["chosen"] == "ue@8" and rec[0]["uniform_params"] == 1000  # from the result


def test_failed_cells_are_recorded_reported_and_retried(tmp_path):
    cmp = small_compare(tmp_path, budgets=(2.0,), seeds=(0,))
    s = run_compare(Config(), compare=cmp, experiment=FakeExperiment(fail={"mde"}), prepare=False, progress=False)
    assert s.ran == 1 and list(s.failed) == ["dlrm/cr2/mde/seed0"]
    out = Path(cmp.output)
    assert "RuntimeError: mde broke" in (out / "compare.md").read_text()
    assert json.loads((out / "compare.json").read_text())["failures"][0]["cell"]["method"] == "mde"
    fixed = FakeExperiment()
    s2 = run_compare(Config(), compare=cmp, experiment=fixed, prepare=False, progress=False)
    assert [c[0] for c in fixed.calls] == ["mde"] and s2.failed == {}
    assert not (out / "runs" / "dlrm/cr2/mde/seed0" / "failed.json").exists()
    assert "Failed cells" not in (out / "compare.md").read_text()
    with pytest.raises(RuntimeError):
        run_compare(
            Config(),
            compare=dataclasses.replace(cmp, stop_on_error=True, output=str(tmp_path / "c2")),
            experiment=FakeExperiment(fail={"ue"}),
            prepare=False,
            progress=False,
        )


def test_cell_values_reads_kept_and_stored_cr():
    rec = {
        "cell": {},
        "uniform_params": 400,
        "result": {"cr": 2.1, "target_cr": 2.0, "params": 100, "bytes": 500, "val": {"auc": 0.7}, "test": {"auc": 0.6}},
    }
    v = cell_values(rec)
    assert v == {"test.auc": 0.6, "val.auc": 0.7, "params": 100.0, "bytes": 500.0, "cr_stored": 4.0, "cr_kept": 2.1}


def test_mean_std_and_choose_best():
    assert mean_std([1.0]) == {"nonfinite": 0, "mean": 1.0, "std": None, "n": 1, "values": [1.0]}
    m = mean_std([1.0, 3.0, float("nan")])
    assert m["mean"] == 2.0 and m["std"] == pytest.approx(2**0.5) and m["nonfinite"] == 1
    assert choose_best([{"val": {"mse": 0.9}}, {"val": {"mse": 0.8}}, {"val": {"mse": 0.85}}])[:2] == (1, "mse")
    assert choose_best([{"val": {"auc": float("nan")}}, {"val": {"auc": 0.5}}])[0] == 1
    assert (
        choose_best([{"val": {"auc": 0.7, "logloss": 0.5}}, {"val": {"auc": 0.6, "logloss": 0.4}}], "logloss")[0] == 1
    )


@pytest.mark.parametrize("name", ["compare_small", "compare_ml100k_ctr", "compare_ml100k_rating", "compare_synthetic"])
def test_ready_configs_load_strictly(name):
    cfg = from_dict(Config, load_toml(REPO / "configs" / f"{name}.toml"), source=name)
    cells = expand_grid(cfg.compare, cfg.model.arch)
    for cell in cells[:: max(1, len(cells) // 7)]:
        cell_config(cfg, cfg.compare, cell)  # every arch / override is valid
    if name == "compare_small":
        # CI-sized, and every registered method has a row (autosrh is dnis under its journal name).
        from recdim.config.methods import names

        assert set(cfg.compare.methods) == set(names()) - {"autosrh"}
        assert len(cells) <= 48 and cfg.prepare.source == "synthetic" and cfg.prepare.synthetic.rows <= 20_000


def test_variants_run_their_method_with_their_overrides(tmp_path):
    """``mde+slow`` runs the registry's ``mde`` with its own overrides, under its own label: its own run
    directories and its own report rows beside plain ``mde``."""
    cmp = small_compare(tmp_path, methods=("mde", "mde+slow"), variants={"mde+slow": ("train.lr=0.5",)})
    assert cell_config(Config(), cmp, Cell("mde+slow", "dlrm", 2.0, 0)).train.lr == 0.5
    assert cell_config(Config(), cmp, Cell("mde", "dlrm", 2.0, 0)).train.lr == Config().train.lr
    fake = FakeExperiment()
    s = run_compare(Config(), compare=cmp, experiment=fake, prepare=False, progress=False)
    assert (s.cells, s.ran) == (8, 8) and {c[0] for c in fake.calls} == {"mde"}
    out = Path(cmp.output)
    assert (out / "runs" / "dlrm/cr2/mde+slow/seed0" / "cell.json").exists()
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [(r["method"], r["cr"]) for r in rows] == [("mde", 2.0), ("mde+slow", 2.0), ("mde", 4.0), ("mde+slow", 4.0)]
