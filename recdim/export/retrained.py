"""The serving artifact of a retrained tiered model: written from the live session after retraining
(:func:`export_step`), or from a retrain run's saved model (``recdim export``, :func:`export_retrained`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from recdim.config import Config
from recdim.config_io import from_dict
from recdim.export.artifact import write_artifact
from recdim.export.dataset_record import DatasetRecord
from recdim.layout.tier_plan import TablePlan
from recdim.retrain.tier_weights import gather_tier_values
from recdim.retrain.tiers import AfterTraining, TieredRun, tiered_session
from recdim.train.model_io import load_model
from recdim.train.run import Session

EXPORT_DIR = "export"


def export_session(
    session: Session,
    plans: List[TablePlan],
    path: Path,
    extra: Optional[Mapping[str, Any]] = None,
    values_dtype: str = "float32",
) -> None:
    """Gathers the tier tables of a (sharded) tiered model to rank 0 and writes the artifact there, its
    values stored as ``values_dtype`` (``"float32"``, ``"float16"`` or ``"int8"``). Collective."""
    values = gather_tier_values(session.dmp, plans, dst=0)
    if session.ctx.is_main:
        arch_state = {k: v.detach().cpu() for k, v in session.model.arch.state_dict().items()}
        dataset = DatasetRecord.from_prepared(session.dataset)
        write_artifact(
            path, plans, values, arch_state, session.cfg.model, session.dataset.schema, extra, dataset, values_dtype
        )


def _facts(results: Mapping[str, Any], meta: Mapping[str, Any]) -> Dict[str, Any]:
    return {"val": results["val"], "test": results["test"], "method": meta["method"], "cr": meta["cr"]}


def export_step(dirname: str = EXPORT_DIR, values_dtype: str = "float32") -> AfterTraining:
    """The step :func:`recdim.retrain.tiers.run_retrain` runs to write ``<run dir>/<dirname>`` from the
    retrained model (values stored as ``values_dtype``); adds ``export`` (the artifact path) to the results.

    Example::

        run_retrain(cfg, Path("runs/pruned/cr-4"), Path("runs/retrain-cr-4"), after=[export_step()])
    """

    def step(run: TieredRun) -> Dict[str, Any]:
        path = run.out_dir / dirname
        export_session(run.session, run.plans, path, _facts(run.results, run.pruned.meta), values_dtype)
        return {"export": str(path)}

    return step


def export_retrained(run_dir: Path, out: Path, values_dtype: str = "float32") -> Path:
    """Rebuilds a retrain run's tiered model, loads its saved (sharded) state in this process and writes
    the artifact to ``out`` (values stored as ``values_dtype``).

    Example::

        export_retrained(Path("runs/dnis-cr4"), Path("models/dnis-cr4"))
    """
    results = json.loads((run_dir / "results.json").read_text())
    cfg = from_dict(Config, results["config"], source=str(run_dir / "results.json"))
    session, plans, sp = tiered_session(cfg, Path(results["prune"]["source"]), None)
    load_model(session.dmp, run_dir)
    export_session(session, plans, out, _facts(results, sp.meta), values_dtype)
    return out
