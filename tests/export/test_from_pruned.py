"""``recdim export --from`` a pruned model: the searched model itself, masked, when its values are the
searched ones; a lottery-ticket or fresh start is refused with what to do instead."""

import json
from pathlib import Path

import pandas as pd
import torch

from recdim.cli import main
from recdim.export.serving import load_serving_model
from recdim.layout.pruned import PrunedModel
from recdim.modules.uniform import table_name
from recdim.prune.planner import PlannerConfig
from recdim.prune.store import read_pruned, write_pruned

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.toml")


def test_a_dnis_pruned_model_exports_as_searched(tmp_path, capsys):
    data = tmp_path / "data"
    sets = ["--set", f"prepare.output={data}", "--set", "prepare.synthetic.rows=3000"]
    run = ["--set", "train.epochs=1", "--set", "train.max_steps=6", "--set", "train.progress=false"]
    assert main(["prepare", "--config", DEMO, *sets]) == 0
    assert main(["search", "--config", DEMO, *sets, *run, "--out", str(tmp_path / "search")]) == 0
    prune = ["--set", "prune.crs=[2.0]"]
    assert (
        main(
            [
                "prune",
                "--config",
                DEMO,
                *sets,
                *prune,
                "--from",
                str(tmp_path / "search"),
                "--out",
                str(tmp_path / "pruned"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["export", "--from", str(tmp_path / "pruned"), "--out", str(tmp_path / "m0")]) == 1
    assert "export one of them" in capsys.readouterr().err

    pruned_dir = tmp_path / "pruned" / "cr-2"
    assert main(["export", "--from", str(pruned_dir), "--out", str(tmp_path / "model")]) == 0
    sp = read_pruned(pruned_dir)
    serving = load_serving_model(tmp_path / "model")
    masked = serving.model.provider.masked_weights()
    for f, values in sp.values.items():  # the artifact holds exactly the pruned, searched values
        torch.testing.assert_close(masked[table_name(f)], values * sp.masks[f], rtol=0, atol=0)
    for k, v in serving.model.arch.state_dict().items():
        torch.testing.assert_close(v, sp.arch_state[k], rtol=0, atol=0)
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["extra"]["retrained"] is False and manifest["extra"]["method"] == "dnis"
    shard = sorted((data / "test").glob("*.parquet"))[0]
    assert (
        main(["predict", "--model", str(tmp_path / "model"), "--input", str(shard), "--out", str(tmp_path / "p.csv")])
        == 0
    )
    preds = pd.read_csv(tmp_path / "p.csv")["prediction"]
    assert len(preds) == len(pd.read_parquet(shard)) and bool(((preds > 0) & (preds < 1)).all())


def test_a_lottery_ticket_is_not_a_servable_model(tmp_path, capsys):
    masks = {"user": torch.ones(5, 4, dtype=torch.bool)}
    pm = PrunedModel("pep", 1.0, masks, {"user": torch.randn(5, 4)}, None, {"init": "lottery ticket: initial values"})
    d = write_pruned(tmp_path / "pruned", pm, PlannerConfig(), {"search": str(tmp_path / "search")})
    capsys.readouterr()
    assert main(["export", "--from", str(d), "--out", str(tmp_path / "model")]) == 1
    err = capsys.readouterr().err
    assert "retraining's starting point (lottery ticket: initial values)" in err and "recdim retrain --from" in err
    assert not (tmp_path / "model").exists()
