"""End to end through the ``recdim`` command: prepare, train, results.json (marked slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recdim.cli import main

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "datasets" / "ml-100k"
needs_ml100k = pytest.mark.skipif(not (ML100K / "u.data").exists(), reason=f"MovieLens 100K not found at {ML100K}")


def recdim(*args: str) -> dict:
    assert main(list(args)) == 0
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    return json.loads((out / "results.json").read_text()) if out else {}


@pytest.mark.slow
@needs_ml100k
def test_ml100k_mf_rating(tmp_path):
    cfg = str(ROOT / "configs" / "ml100k_rating.toml")
    data = f"prepare.output={tmp_path / 'data'}"
    common = ["--set", f"prepare.input={ML100K}", "--set", data]
    recdim("prepare", "--config", cfg, *common)
    res = recdim(
        "train",
        "--config",
        cfg,
        *common,
        "--set",
        "train.epochs=8",
        "--set",
        "train.progress=false",
        "--out",
        str(tmp_path / "run"),
    )
    assert res["test"]["mse"] < 0.95
    assert res["val"]["mse"] < res["untrained_val"]["mse"] - 0.1
    assert res["bytes"] == 4 * res["params"]


@pytest.mark.slow
@needs_ml100k
def test_ml100k_deepfm_ctr(tmp_path):
    cfg = str(ROOT / "configs" / "ml100k_ctr.toml")
    common = ["--set", f"prepare.input={ML100K}", "--set", f"prepare.output={tmp_path / 'data'}"]
    recdim("prepare", "--config", cfg, *common)
    res = recdim(
        "train",
        "--config",
        cfg,
        *common,
        "--set",
        "train.epochs=4",
        "--set",
        "train.progress=false",
        "--out",
        str(tmp_path / "run"),
    )
    assert res["test"]["auc"] > 0.75
    assert res["val"]["auc"] > res["untrained_val"]["auc"] + 0.1
    assert res["val"]["logloss"] < res["untrained_val"]["logloss"]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_dlrm_one_process_matches_torchrun_two_processes(tmp_path):
    """The same DLRM trained in 1 process and under torchrun with 2 gloo processes (table-wise)."""
    cfg = str(ROOT / "configs" / "demo.toml")
    sets = [
        "--set",
        f"prepare.output={tmp_path / 'data'}",
        "--set",
        "prepare.synthetic.rows=20000",
        "--set",
        "train.epochs=2",
        "--set",
        "train.progress=false",
        "--set",
        "train.sharding=table_wise",
    ]
    recdim("prepare", "--config", cfg, *sets)
    one = recdim("train", "--config", cfg, *sets, "--out", str(tmp_path / "one"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "recdim.cli",
        "train",
        "--config",
        cfg,
        *sets,
        "--out",
        str(tmp_path / "two"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert one["steps"] == two["steps"]
    # Same init, same global batches; only float reduction order differs.
    for split in ("val", "test"):
        for metric in ("auc", "logloss"):
            assert abs(one[split][metric] - two[split][metric]) < 1e-3, (split, metric, one[split], two[split])
