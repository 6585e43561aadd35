"""benchmarks/search_overhead.py runs every search variant on a tiny dataset and writes its JSON rows (slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recdim.config import load
from recdim.data.preprocess import prepare

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_variant_runs(tmp_path):
    data = tmp_path / "data"
    prepare(
        load(str(ROOT / "configs" / "demo.toml"), (f"prepare.output={data}", "prepare.synthetic.rows=3000")).prepare
    )
    out = tmp_path / "rows.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "search_overhead.py"), "--data", str(data), "--arches", "dlrm"]
    cmd += ["--steps", "2", "--warmup", "1", "--repeats", "1", "--batch-size", "128", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=600)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    labels = {r.get("variant", r.get("label")) for r in rows}
    assert {"uniform", "dnis", "dnis_f10", "pep", "autodim"} <= labels, labels
    assert all(r["cpu_step_ms"] > 0 for r in rows)
