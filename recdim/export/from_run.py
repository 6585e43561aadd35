"""``recdim export --from RUN``: the serving artifact of any run that holds a servable model.

- a retrain run (``recdim retrain``): its tier tables (:func:`recdim.export.retrained.export_retrained`);
- a train run (``recdim train``): the uniform K-wide model, stored as one full-width tier per table (the
  same artifact format, so ``recdim predict`` and ``recdim inspect`` read it unchanged);
- a pruned model (``recdim prune``'s ``cr-X`` directory) whose values are the searched model itself
  (DNIS's ``e ⊙ alpha``, PEP's ``S(V, s)`` with ``prune.init = "inherit"``, a trained uniform table pruned
  by magnitude): its masked tables and arch, not retrained;
- a search run has no servable model of its own (its tables are still searching); the error says to
  prune and retrain it first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import torch

from recdim.config import Config
from recdim.config_io import from_dict
from recdim.export.dataset_record import DatasetRecord
from recdim.export.retrained import export_retrained
from recdim.export.serving import export_masked
from recdim.layout.pruned import SERVABLE_INITS
from recdim.modules.table_init import full_tables
from recdim.modules.uniform import table_name
from recdim.prune.planner import plan_tables
from recdim.prune.store import read_pruned
from recdim.train.model_io import load_model
from recdim.train.run import open_session


def _results(run_dir: Path) -> Dict[str, Any]:
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (export needs a finished train or retrain run)")
    return json.loads(path.read_text())


def export_trained(run_dir: Path, out: Path) -> Path:
    """Writes the uniform model of a ``recdim train`` run as an artifact (one process).

    Example::

        export_trained(Path("runs/train"), Path("models/uniform"))
    """
    results = _results(run_dir)
    cfg = from_dict(Config, results["config"], source=str(run_dir / "results.json"))
    session = open_session(cfg)
    if session.ctx.world_size != 1:
        raise RuntimeError("recdim export runs in one process (it reads whole tables); run it without torchrun")
    load_model(session.dmp, run_dir)
    tables = full_tables(session.dmp)
    K = cfg.model.embedding_dim
    masks = {f: torch.ones(tables[table_name(f)].size(0), K, dtype=torch.bool) for f in session.features}
    plans = plan_tables(masks)
    extra = {"val": results["val"], "test": results["test"], "method": "uniform", "cr": 1.0}
    dataset = DatasetRecord.from_prepared(session.dataset)
    export_masked(out, plans, tables, session.model.arch, cfg.model, session.dataset.schema, extra, dataset)
    return out


def export_pruned(pruned_dir: Path, out: Path) -> Path:
    """Writes a pruned model whose values are the searched model's (see the module docstring) as an
    artifact, without retraining (one process).

    Raises:
        ValueError: the pruned model's values are retraining's starting point (a lottery ticket, a fresh
            or inherited-prefix start), not a model that serves.

    Example::

        export_pruned(Path("runs/dnis-pruned/cr-4"), Path("models/dnis-cr4-searched"))
    """
    sp = read_pruned(pruned_dir)
    rule = sp.meta.get("info", {}).get("init")
    if sp.values is None or sp.arch_state is None or rule not in SERVABLE_INITS:
        raise ValueError(
            f"{pruned_dir}: its values are retraining's starting point ({rule}), not a trained model. Retrain it "
            f"(recdim retrain --from {pruned_dir}) and export that run, or prune with prune.init=inherit"
        )
    search_dir = Path(sp.meta["source"]["search"])
    results = _results(search_dir)
    cfg = from_dict(Config, results["config"], source=str(search_dir / "results.json"))
    session = open_session(cfg)
    if session.ctx.world_size != 1:
        raise RuntimeError("recdim export runs in one process (it reads whole tables); run it without torchrun")
    session.model.arch.load_state_dict(sp.arch_state)
    tables = {table_name(f): v for f, v in sp.values.items()}
    plans = plan_tables(sp.masks)
    extra = {"method": sp.meta["method"], "cr": sp.meta["cr"], "retrained": False, "init": rule}
    dataset = DatasetRecord.from_prepared(session.dataset)
    export_masked(out, plans, tables, session.model.arch, cfg.model, session.dataset.schema, extra, dataset)
    return out


def export_run(run_dir: Path, out: Path) -> Path:
    """The artifact of ``run_dir`` (a retrain run, a train run or a servable pruned model), written to ``out``.

    Raises:
        ValueError: for a search run, or a directory that is neither.

    Example::

        export_run(Path("runs/retrain-cr-4"), Path("models/cr-4"))
    """
    run_dir = Path(run_dir)
    if (run_dir / "masks.safetensors").is_file():
        return export_pruned(run_dir, out)
    if (run_dir / "prune.json").is_file():
        dirs = ", ".join(sorted(p.parent.name for p in run_dir.glob("*/masks.safetensors"))) or "none"
        raise ValueError(f"{run_dir} holds several pruned models ({dirs}): export one of them (--from {run_dir}/cr-X)")
    results = _results(run_dir)
    if "prune" in results:
        return export_retrained(run_dir, out)
    method = (results.get("search") or {}).get("method")
    if method:
        raise ValueError(
            f"{run_dir} is a {method} search run: its tables are still searching. Prune it (recdim prune --from "
            f"{run_dir}), retrain a pruned model (recdim retrain --from <pruned>/cr-X), and export that run"
        )
    if "config" not in results or not (run_dir / "model").is_dir():
        raise ValueError(f"{run_dir}: not a train or retrain run (no config or no saved model)")
    return export_trained(run_dir, out)
