"""benchmarks/artifact_bytes.py on small tables: one row per artifact, float32 at most 1.10x the floor and
below CSR, float16 about half of float32 where the mask is cheap."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("artifact_bytes", ROOT / "benchmarks" / "artifact_bytes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("pattern", ["elementwise", "block"])
@pytest.mark.parametrize("cr", [2.0, 20.0])
def test_rows_meet_the_floor_targets(bench, tmp_path, pattern, cr):
    rows = bench.run_case(16, cr, pattern, tables=1, rows=3000, seed=0, work=tmp_path)
    assert [r["dtype"] for r in rows] == ["float32", "float16", "int8"]
    keys = {"cr", "pattern", "dtype", "disk_bytes", "floor_bytes", "csr_bytes", "uniform_bytes"}
    assert all(keys <= set(r) for r in rows)
    fp32, fp16 = rows[0], rows[1]
    assert fp32["disk_bytes"] <= 1.10 * fp32["floor_bytes"] and fp32["disk_bytes"] < fp32["csr_bytes"]
    if cr == 2.0 or pattern == "block":
        assert fp16["disk_bytes"] <= 0.55 * fp32["disk_bytes"]
