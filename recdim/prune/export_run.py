"""``recdim export``: a retrain run's saved model -> the serving artifact (one process)."""

from __future__ import annotations

import json
from pathlib import Path

from recdim.config import Config
from recdim.config_io import from_dict
from recdim.prune.retrain import export_session, tiered_session
from recdim.train.model_io import load_model


def export_retrained(run_dir: Path, out: Path) -> Path:
    """Rebuilds a retrain run's tiered model, loads its saved (sharded) state in this process and writes
    the artifact to ``out``.

    Example::

        export_retrained(Path("runs/dnis-cr4"), Path("models/dnis-cr4"))
    """
    results = json.loads((run_dir / "results.json").read_text())
    cfg = from_dict(Config, results["config"], source=str(run_dir / "results.json"))
    session, plans, sp = tiered_session(cfg, Path(results["prune"]["source"]), None)
    load_model(session.dmp, run_dir)
    extra = {"val": results["val"], "test": results["test"], "method": sp.meta["method"], "cr": sp.meta["cr"]}
    export_session(session, plans, out, extra)
    return out
