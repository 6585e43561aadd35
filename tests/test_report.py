"""The pipeline report: one row per model, compression against the uniform model (held and stored bytes),
exported paths named."""

import json

from recdim.config import Config
from recdim.report import write_pipeline_report


def _res(params, bytes_, auc):
    return {"params": params, "bytes": bytes_, "test": {"auc": auc}, "val": {"auc": auc}, "wall_time_s": 3.0}


def test_report_rows_and_exported_paths(tmp_path):
    uniform = _res(1000, 4000, 0.70)
    search = {"search": {"method": "dnis"}, "wall_time_s": 5.0}
    export = tmp_path / "retrain-cr-4" / "export"
    export.mkdir(parents=True)
    (export / "manifest.json").write_text(json.dumps({"bytes": {"total": 1000}}))
    retrained = [dict(_res(250, 1500, 0.69), prune={"cr": 4.0}, retrain_time_s=2.0, export=str(export))]
    report = write_pipeline_report(tmp_path, Config(), uniform, search, retrained, 12.0)
    assert [r["model"] for r in report["rows"]] == ["uniform", "dnis CR 4.00"]
    row = report["rows"][1]
    assert (row["cr_params"], row["cr_bytes"]) == (4.0, 4000 / 1500) and row["export"] == str(export)
    assert (row["stored_bytes"], row["cr_stored"]) == (1000, 4.0)  # the artifact's bytes on disk
    md = (tmp_path / "report.md").read_text()
    assert "| dnis CR 4.00 | 0.6900 | 250 | 1,500 | 4.00 | 2.67 | 1,000 | 4.00 | 2.0 |" in md
    assert f"- dnis CR 4.00: `{export}`" in md
    assert json.loads((tmp_path / "report.json").read_text())["rows"][1]["export"] == row["export"]
