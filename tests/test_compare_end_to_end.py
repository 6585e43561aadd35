"""``recdim compare`` with the small config: every method gets a row of numbers from real runs (slow)."""

import json
import math
from pathlib import Path

import pytest

from recdim.cli import main
from recdim.config import load

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "compare_small.toml")


@pytest.mark.slow
def test_small_comparison_has_every_method(tmp_path):
    sets = ["--set", f"prepare.output={tmp_path / 'data'}"]
    out = tmp_path / "compare"
    assert main(["compare", "--config", CONFIG, *sets, "--out", str(out)]) == 0
    cfg = load(CONFIG)
    report = json.loads((out / "compare.json").read_text())
    assert not report["failures"]
    rows = {(r["method"], r["cr"]): r for r in report["rows"]}
    for method in cfg.compare.methods:
        for cr in cfg.compare.budgets:
            row = rows[(method, cr)]
            assert row["n"] == len(cfg.compare.seeds)
            aucs = row["stats"]["test.auc"]["values"]
            assert len(aucs) == len(cfg.compare.seeds) and all(0.6 < a < 1.0 for a in aucs), (method, cr, aucs)
            assert all(b > 0 and math.isfinite(b) for b in row["stats"]["bytes"]["values"])
    table = (out / "compare.md").read_text()
    for method in cfg.compare.methods:
        assert f"| {method} |" in table
    assert (out / "compare.png").stat().st_size > 1000
    # A second run finds every cell finished and only rewrites the report.
    assert main(["compare", "--config", CONFIG, *sets, "--out", str(out)]) == 0
