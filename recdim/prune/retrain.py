"""``recdim retrain`` and ``recdim export``: train the pruned model on its tier tables, write the artifact."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from recdim.config import Config
from recdim.data.prepared import PreparedDataset
from recdim.data.schema import FieldKind, Schema
from recdim.export.artifact import write_artifact
from recdim.modules.compressed import tiered_provider_factory
from recdim.modules.tier_tables import gather_tier_values, masked_init, write_tier_tables
from recdim.layout.tier_plan import TablePlan
from recdim.prune.planner import plan_tables
from recdim.prune.store import plan_bytes, planner_from_json, read_pruned
from recdim.modules.table_init import init_tables
from recdim.train.model_io import save_model
from recdim.train.results import write_json
from recdim.train.run import Session, open_session, train_and_evaluate

EXPORT_DIR = "export"


def export_session(session: Session, plans: List[TablePlan], path: Path, extra: Optional[Mapping[str, Any]] = None) -> None:
    """Gathers the tier tables of a (sharded) tiered model to rank 0 and writes the artifact there.
    Collective."""
    values = gather_tier_values(session.dmp, plans, dst=0)
    if session.ctx.is_main:
        arch_state = {k: v.detach().cpu() for k, v in session.model.arch.state_dict().items()}
        write_artifact(path, plans, values, arch_state, session.cfg.model, _schema(session), extra)


def _schema(session: Session) -> Schema:
    return session.dataset.schema


def tiered_session(cfg: Config, pruned_dir: Path, out_dir: Optional[Path]) -> tuple:
    """Opens a training session whose provider is the pruned model's tier tables, initialised as the
    pruned model says (its saved values under the mask, or fresh masked values; its arch, or fresh).

    Returns:
        ``(session, plans, stored pruned model)``.
    """
    sp = read_pruned(pruned_dir)
    planner = planner_from_json(sp.meta["planner"])
    plans = plan_tables(sp.masks, planner)
    ds = PreparedDataset(cfg.data_path)
    features = ds.feature_names(cfg.data.features)
    if sorted(features) != sorted(sp.masks):
        raise ValueError(f"{pruned_dir}: masks are for {sorted(sp.masks)}, the config's features are {sorted(features)}")
    multi = [f for f in features if ds.schema[f].kind == FieldKind.MULTI_CATEGORICAL]
    session = open_session(cfg, tiered_provider_factory(plans, multi), out_dir=out_dir)
    if sp.values is not None:
        write_tier_tables(session.dmp, plans, {p.name: sp.values[p.feature] for p in plans})
    else:
        init_tables(session.dmp, cfg.train.seed, cfg.train.init_std, fill=masked_init(plans))
    if sp.arch_state is not None:
        session.model.arch.load_state_dict(sp.arch_state)
    return session, plans, sp


def run_retrain(cfg: Config, pruned_dir: Path, out_dir: Path) -> Dict[str, Any]:
    """Retrains a pruned model on its tier tables (sharded like any model: the memory saving is real
    during retraining too), saves it, exports the artifact to ``<out_dir>/export`` and writes
    ``results.json`` (with the pruned model's budget and the plan's bytes by kind).

    Example::

        results = run_retrain(load("configs/demo.toml"), Path("runs/dnis-pruned/cr-4"), Path("runs/dnis-cr4"))
    """
    t0 = time.perf_counter()
    session, plans, sp = tiered_session(cfg, pruned_dir, out_dir)
    results = train_and_evaluate(session, None)
    results["prune"] = {k: sp.meta[k] for k in ("method", "cr", "kept", "total", "info", "tiers")}
    results["prune"]["source"] = str(pruned_dir)
    results["plan_bytes"] = plan_bytes(plans)["total"]
    save_model(session.dmp, out_dir, session.trainer.global_step, {"pruned": str(pruned_dir)})
    extra = {"val": results["val"], "test": results["test"], "method": sp.meta["method"], "cr": sp.meta["cr"]}
    export_session(session, plans, Path(out_dir) / EXPORT_DIR, extra)
    results["retrain_time_s"] = time.perf_counter() - t0
    results["export"] = str(Path(out_dir) / EXPORT_DIR)
    if session.ctx.is_main:
        write_json(Path(out_dir) / "results.json", results)
    return results
