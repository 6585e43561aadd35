import json
import math

import pytest

from recdim.compare.frontier import envelope, frontier_rows, frontier_value, render_frontier_markdown
from recdim.compare.report import write_compare_report


def _cell(method, cr, seed, auc, bytes_, arch="dlrm"):
    return {"arch": arch, "cr": cr, "method": method, "seed": seed, "values": {"test.auc": auc, "bytes": bytes_}}


def test_envelope_is_monotone_and_merges_repeated_bytes():
    env = envelope([(400.0, 0.69), (0.0, 0.56), (100.0, 0.70), (100.0, 0.68)])
    assert env == [(0.0, 0.56), (100.0, 0.70), (400.0, 0.70)]
    # lower is better: the running minimum
    assert envelope([(10.0, 0.9), (20.0, 0.95), (30.0, 0.8)], higher=False) == [(10.0, 0.9), (20.0, 0.9), (30.0, 0.8)]


def test_frontier_value_interpolates_in_log_bytes():
    env = [(0.0, 0.5), (100.0, 0.7), (10000.0, 0.8)]
    assert frontier_value(env, 50.0) == pytest.approx(0.6)  # linear from 0 bytes
    assert frontier_value(env, 1000.0) == pytest.approx(0.75)  # halfway in log10 between 100 and 10000
    assert frontier_value(env, 1e6) == 0.8  # flat above
    assert frontier_value([(100.0, 0.7)], 50.0) is None  # undefined below the smallest point
    assert frontier_value(env, 100.0) == pytest.approx(0.7)


def test_frontier_rows_pair_by_seed_against_ue_and_reference():
    cells = []
    for s, (ue16, ue4, mag, dn) in enumerate([(0.69, 0.70, 0.700, 0.706), (0.695, 0.698, 0.701, 0.707)]):
        cells += [
            _cell("ue", 4, s, ue16, 4000.0),
            _cell("ue", 10, s, ue4, 1000.0),
            _cell("ue@0", 4, s, 0.56, 0.0),
            _cell("magnitude", 10, s, mag, 2000.0),
            _cell("dnis", 10, s, dn, 2000.0),
        ]
    rows = {r["method"]: r for r in frontier_rows(cells, "test.auc")}
    assert set(rows) == {"magnitude", "dnis"}  # UE cells draw the frontier, they are not rows
    dn = rows["dnis"]
    # the envelope at 2000 B is ue d=4's value (d=16 at 4000 B is worse: the envelope keeps 0.70 / 0.698)
    assert dn["vs_frontier"]["values"] == pytest.approx([0.706 - 0.70, 0.707 - 0.698])
    assert dn["vs_reference"]["values"] == pytest.approx([0.006, 0.006])
    diffs = dn["vs_frontier"]["values"]
    assert dn["vs_frontier"]["std"] == pytest.approx(abs(diffs[0] - diffs[1]) / math.sqrt(2))
    assert dn["vs_frontier"]["beats"] is True  # mean 0.0075 > 2 * 0.0021
    assert rows["magnitude"]["vs_reference"] is None  # not compared with itself
    md = render_frontier_markdown(list(rows.values()), "test.auc")
    assert "| dlrm | dnis | 10 | 2 |" in md and "**>2σ**" in md


def test_frontier_rows_flip_the_sign_for_errors_and_name_missing_seeds():
    cells = [
        {"arch": "mf", "cr": 2.0, "method": "ue", "seed": 0, "values": {"test.mse": 0.90, "bytes": 100.0}},
        {"arch": "mf", "cr": 2.0, "method": "pep", "seed": 0, "values": {"test.mse": 0.88, "bytes": 100.0}},
        {"arch": "mf", "cr": 2.0, "method": "pep", "seed": 1, "values": {"test.mse": 0.88, "bytes": 100.0}},
    ]
    (row,) = frontier_rows(cells, "test.mse")
    assert row["vs_frontier"]["values"] == pytest.approx([0.02])  # lower mse is better: positive
    assert row["missing"] == [1]  # seed 1 has no UE cell
    assert row["vs_frontier"]["beats"] is False  # one seed has no std


def test_compare_report_writes_the_frontier(tmp_path):
    for method, cr, seed, auc, b in [
        ("ue", 4.0, 0, 0.70, 1000),
        ("ue@0", 4.0, 0, 0.55, 0),
        ("dnis", 4.0, 0, 0.71, 800),
    ]:
        d = tmp_path / "runs" / f"dlrm/cr{cr:g}/{method}/seed{seed}"
        d.mkdir(parents=True)
        rec = {
            "cell": {"arch": "dlrm", "cr": cr, "method": method, "seed": seed},
            "result": {"test": {"auc": auc}, "bytes": b, "params": max(b // 4, 1)},
        }
        (d / "cell.json").write_text(json.dumps(rec))
    paths = write_compare_report(tmp_path)
    data = json.loads(paths["json"].read_text())
    (row,) = data["frontier"]
    # frontier at 800 B: linear from (0, 0.55) to (1000, 0.70) -> 0.67
    assert row["frontier"] == pytest.approx(0.67)
    assert row["vs_frontier"]["values"] == pytest.approx([0.04])
    assert "Against the UE frontier" in paths["markdown"].read_text()
