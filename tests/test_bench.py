"""``recdim bench``: finding the benchmarks, listing them, and running one in a fresh interpreter."""

import json
import sys
from pathlib import Path

import pytest

from recdim import bench
from recdim.cli import main

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

# A benchmark in the shape of the real ones: its own argparse, one JSON row appended to --out.
FAKE = '''"""Fake benchmark: one JSON row with what it was given.

Second line, not listed.
"""
import argparse, json, os, sys

p = argparse.ArgumentParser()
p.add_argument("--out", default="fake.jsonl")
p.add_argument("--config", default=None)
p.add_argument("--set", action="append", default=[])
p.add_argument("--steps", type=int, default=1)
p.add_argument("--exit", type=int, default=0)
args = p.parse_args()
row = {"bench": "fake", "steps": args.steps, "config": args.config, "set": args.set,
       "env": {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_PORT", "TORCHELASTIC_RUN_ID")}}
with open(args.out, "a") as fh:
    fh.write(json.dumps(row) + "\\n")
sys.exit(args.exit)
'''

# No --out, --config or --set: recdim bench must not pass them.
BARE = """import sys
print("bare ran with", sys.argv[1:])
"""


@pytest.fixture
def fake_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "benches"
    d.mkdir()
    (d / "fake.py").write_text(FAKE)
    (d / "bare.py").write_text(BARE)
    (d / "_helpers.py").write_text("# not a benchmark\n")
    monkeypatch.setenv(bench.ENV_VAR, str(d))
    for k in ("RANK", "WORLD_SIZE", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    return d


def _rows(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_unknown_name_is_an_error_listing_the_names(monkeypatch, capsys):
    monkeypatch.setenv(bench.ENV_VAR, str(BENCHMARKS))
    names = sorted(p.stem for p in BENCHMARKS.glob("*.py"))
    assert main(["bench", "--name", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("recdim bench: error: unknown benchmark 'nope'; available: ")
    assert err.strip().endswith(", ".join(names))
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench.run_bench("nope", directory=BENCHMARKS)
    assert main(["bench"]) == 1 and "--name" in capsys.readouterr().err  # neither --name nor --list


def test_list_names_every_script_with_its_summary(monkeypatch, capsys):
    monkeypatch.setenv(bench.ENV_VAR, str(BENCHMARKS))
    assert main(["bench", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    scripts = sorted(BENCHMARKS.glob("*.py"))
    assert len(scripts) >= 5 and [line.split()[0] for line in lines] == [p.stem for p in scripts]
    for line, script in zip(lines, scripts):
        first = bench.summary(script)
        assert first and line.endswith(first)
    assert any("Training samples/s" in line for line in lines if line.startswith("train_throughput "))


def test_benchmarks_dir_search_order(tmp_path, monkeypatch):
    monkeypatch.delenv(bench.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert bench.benchmarks_dir().resolve() == BENCHMARKS  # beside the installed (editable) package
    (tmp_path / "benchmarks").mkdir()
    assert bench.benchmarks_dir().resolve() == (tmp_path / "benchmarks").resolve()  # ./benchmarks first
    monkeypatch.setenv(bench.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="RECDIM_BENCHMARKS"):
        bench.benchmarks_dir()


def test_every_real_benchmark_takes_out():
    for name, script in bench.available(BENCHMARKS).items():
        cmd = bench.command(name, "o", directory=BENCHMARKS)
        assert cmd[:4] == [sys.executable, str(script), "--out", str(Path("o") / f"{name}.jsonl")], name


def test_runs_a_fake_benchmark_end_to_end(fake_dir, tmp_path):
    assert sorted(bench.available()) == ["bare", "fake"]  # _helpers.py is not a benchmark
    out = tmp_path / "out"
    rc = main(
        [
            "bench",
            "--name",
            "fake",
            "--out",
            str(out),
            "--config",
            str(ROOT / "configs" / "demo.toml"),
            "--set",
            "train.epochs=2",
            "--",
            "--steps",
            "3",
        ]
    )
    assert rc == 0
    (row,) = _rows(out / "fake.jsonl")
    assert row["bench"] == "fake" and row["steps"] == 3
    assert row["config"] == str(ROOT / "configs" / "demo.toml") and row["set"] == ["train.epochs=2"]


def test_exit_code_and_options_the_script_lacks(fake_dir, tmp_path, capfd):
    out = tmp_path / "out"
    assert main(["bench", "--name", "fake", "--out", str(out), "--", "--exit", "3"]) == 3  # the script's exit code
    assert len(_rows(out / "fake.jsonl")) == 1
    # bare.py declares no --out / --config / --set: none is passed, only the pass-through arguments.
    cmd = bench.command("bare", out, config="c.toml", overrides=["train.epochs=2"], extra_args=["x"])
    assert cmd == [sys.executable, str(fake_dir / "bare.py"), "x"]
    assert main(["bench", "--name", "bare", "--out", str(out), "--", "y"]) == 0
    assert "bare ran with ['y']" in capfd.readouterr().out


def test_under_torchrun_only_rank_zero_runs_without_the_launcher_env(fake_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    launcher = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"}
    assert bench.run_bench("fake", out, environ=launcher) == 0
    assert not (out / "fake.jsonl").exists()  # rank 1 did nothing
    assert bench.run_bench("fake", out, environ=dict(launcher, RANK="0")) == 0
    (row,) = _rows(out / "fake.jsonl")
    assert row["env"] == {"RANK": None, "WORLD_SIZE": None, "MASTER_PORT": None, "TORCHELASTIC_RUN_ID": None}
