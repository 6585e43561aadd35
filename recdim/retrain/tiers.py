"""``recdim retrain``: train a pruned model on its tier tables.

Retraining knows nothing of serving: what runs after training on the live session (writing the artifact,
:func:`recdim.export.retrained.export_step`) is passed in by the caller, the CLI or the pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from recdim.config import Config
from recdim.data.prepared import PreparedDataset
from recdim.data.schema import FieldKind
from recdim.fsio import write_json
from recdim.layout.field_signal import field_dims
from recdim.layout.pruned import SERVABLE_INITS
from recdim.layout.tier_plan import TablePlan
from recdim.modules.table_init import init_tables
from recdim.modules.tiered import tiered_provider_factory
from recdim.prune.planner import plan_tables
from recdim.prune.store import StoredPruned, plan_bytes, planner_from_json, read_pruned
from recdim.retrain.freeze import retrain_scope
from recdim.retrain.tier_weights import masked_init, write_tier_tables
from recdim.train.model_io import save_model
from recdim.train.run import Session, evaluate_as_is, open_session, train_and_evaluate


@dataclass
class TieredRun:
    """A retrained tiered model, live: what the steps after training read.

    Args:
        session: the training session (its model holds the retrained tier tables, sharded).
        plans: the tier plans of every table.
        pruned: the pruned model it was retrained from.
        results: the training results so far (``val``, ``test``, ``prune``, ...).
        out_dir: the retrain run directory.
    """

    session: Session
    plans: List[TablePlan]
    pruned: StoredPruned
    results: Dict[str, Any]
    out_dir: Path


AfterTraining = Callable[[TieredRun], Mapping[str, Any]]
"""A step run on every rank after training and saving (may be collective); what it returns is merged
into ``results.json``."""


def tiered_session(
    cfg: Config, pruned_dir: Path, out_dir: Optional[Path]
) -> Tuple[Session, List[TablePlan], StoredPruned]:
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
        raise ValueError(
            f"{pruned_dir}: masks are for {sorted(sp.masks)}, the config's features are {sorted(features)}"
        )
    multi = [f for f in features if ds.schema[f].kind == FieldKind.MULTI_CATEGORICAL]
    session = open_session(cfg, tiered_provider_factory(plans, multi), out_dir=out_dir)
    if sp.values is not None:
        write_tier_tables(session.dmp, plans, {p.name: sp.values[p.feature] for p in plans})
    else:
        init_tables(session.dmp, cfg.train.seed, cfg.train.init_std, fill=masked_init(plans))
    if sp.arch_state is not None:
        session.model.arch.load_state_dict(sp.arch_state)
    return session, plans, sp


def run_retrain(cfg: Config, pruned_dir: Path, out_dir: Path, after: Sequence[AfterTraining] = ()) -> Dict[str, Any]:
    """Retrains a pruned model on its tier tables (sharded like any model: the memory saving is real
    during retraining too), saves it, runs the ``after`` steps and writes ``results.json`` (with the
    pruned model's budget and the plan's bytes by kind).

    Args:
        cfg: the experiment config.
        pruned_dir: a ``recdim prune`` output (``cr-*``).
        out_dir: the run directory (``model/``, ``results.json``, checkpoints).
        after: steps on the retrained model, in order (e.g. ``export_step()``, which writes
            ``<out_dir>/export``); their returned fields join the results.

    Example::

        results = run_retrain(cfg, Path("runs/dnis-pruned/cr-4"), Path("runs/dnis-cr4"), after=[export_step()])
    """
    t0 = time.perf_counter()
    session, plans, sp = tiered_session(cfg, pruned_dir, out_dir)
    if cfg.prune.retrain == "none":  # AutoSrh's \R: the pruned model scored as searched
        init = sp.meta.get("info", {}).get("init")
        if init not in SERVABLE_INITS:
            raise ValueError(
                f"{pruned_dir}: prune.retrain = 'none' scores the pruned model as it starts, but it starts from "
                f"{init!r}, not the searched values; prune it with prune.init = 'inherit'"
            )
        results = evaluate_as_is(session)
    else:
        with retrain_scope(session, cfg.prune.retrain):
            results = train_and_evaluate(session, None)
    results["retrain_mode"] = cfg.prune.retrain
    results["prune"] = {k: sp.meta[k] for k in ("method", "cr", "kept", "total", "info", "tiers")}
    results["prune"]["source"] = str(pruned_dir)
    results["plan_bytes"] = plan_bytes(plans)["total"]
    results["field_dims"] = field_dims(sp.masks, {f: session.dataset.counts(f) for f in sp.masks})
    save_model(session.dmp, out_dir, session.trainer.global_step, {"pruned": str(pruned_dir)})
    run = TieredRun(session, plans, sp, results, Path(out_dir))
    for step in after:
        results.update(step(run))
    results["retrain_time_s"] = time.perf_counter() - t0
    if session.ctx.is_main:
        write_json(Path(out_dir) / "results.json", results)
    return results
