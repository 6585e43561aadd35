"""``recdim run``: prepare -> search -> prune (each budget) -> retrain on tiers -> export -> report.

Every stage writes its own run directory under ``--out`` and is skipped when its ``results.json`` is
already there, so a pipeline that stopped picks up where it was (training stages also resume from
their checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch.distributed as dist

from recdim.config import Config
from recdim.report import write_pipeline_report


def _done(run_dir: Path) -> Optional[Dict[str, Any]]:
    p = run_dir / "results.json"
    return json.loads(p.read_text()) if p.exists() else None


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def ensure_prepared(cfg: Config) -> None:
    """Prepares ``cfg.prepare`` unless the data is already there (rank 0; others wait)."""
    from recdim.data.preprocess import prepare

    if not (Path(cfg.data_path) / "meta.json").exists():
        if int(os.environ.get("RANK", "0")) == 0:
            prepare(cfg.prepare)
    _barrier()


def prune_stage(
    cfg: Config, config_path: Optional[str], overrides: List[str], search_dir: Path, out: Path
) -> List[Path]:
    """Runs ``recdim prune`` (one process: it reads whole tables). Under several ranks rank 0 runs it as
    a one-process subprocess and the others wait."""
    from recdim.prune.run import run_prune

    if not (out / "prune.json").exists():
        if _world() == 1:
            run_prune(cfg, search_dir, out)
        else:
            if dist.get_rank() == 0:
                env = {
                    k: v
                    for k, v in os.environ.items()
                    if k
                    not in (
                        "RANK",
                        "WORLD_SIZE",
                        "LOCAL_RANK",
                        "LOCAL_WORLD_SIZE",
                        "MASTER_ADDR",
                        "MASTER_PORT",
                        "GROUP_RANK",
                        "ROLE_RANK",
                        "TORCHELASTIC_RUN_ID",
                    )
                }
                cmd = [sys.executable, "-m", "recdim.cli", "prune", "--from", str(search_dir), "--out", str(out)]
                if config_path:
                    cmd += ["--config", config_path]
                for o in overrides:
                    cmd += ["--set", o]
                subprocess.run(cmd, check=True, env=env)
            _barrier()
    index = json.loads((out / "prune.json").read_text())
    return [out / e["dir"] for e in index["pruned"]]


def run_pipeline(
    cfg: Config, out: Path, config_path: Optional[str] = None, overrides: List[str] = ()
) -> Dict[str, Any]:
    """The whole chain for ``cfg.search.method`` plus the uniform baseline it is measured against.

    Args:
        cfg: the experiment.
        out: the pipeline directory (``uniform/``, ``search/``, ``pruned/cr-*/``, ``retrain-cr-*/`` with
            ``export/`` each, ``report.md``, ``report.json``).
        config_path: the config file (passed on to the one-process prune step under torchrun).
        overrides: the command-line overrides (likewise).

    Example::

        report = run_pipeline(load("configs/demo.toml"), Path("runs/demo"))
    """
    from recdim.export.retrained import export_step
    from recdim.retrain.tiers import run_retrain
    from recdim.search.run import run_search
    from recdim.train.run import run_train

    out = Path(out)
    t0 = time.perf_counter()
    ensure_prepared(cfg)
    uniform = _done(out / "uniform") or run_train(cfg, out / "uniform")
    search = _done(out / "search") or run_search(cfg, out / "search")
    pruned = prune_stage(cfg, config_path, list(overrides), out / "search", out / "pruned")
    retrained = [
        _done(out / f"retrain-{d.name}") or run_retrain(cfg, d, out / f"retrain-{d.name}", after=[export_step()])
        for d in pruned
    ]
    report = write_pipeline_report(out, cfg, uniform, search, retrained, time.perf_counter() - t0)
    return report


def run_experiment(
    cfg: Config,
    method: str,
    cr: float,
    seed: int,
    out_dir: Path,
    search_dir: Optional[Path] = None,
    search_cfg: Optional[Config] = None,
) -> Dict[str, Any]:
    """One cell of a comparison: ``method`` at compression rate ``cr`` with ``seed``.

    The method comes from the registry (:mod:`recdim.config.methods`). Search methods search with the
    settings their method object gives for ``cr`` (:meth:`Method.at_budget`: PEP stops at ``1 / cr``),
    prune to ``cr`` (AutoDim: the rate its selected dimensions give) and retrain on tiers; a method scored
    as searched (``evaluate_searched``: AutoDim-s) is evaluated as it is instead, neither pruned nor
    retrained. Baselines (``ue``, ``ue@<d>``, ``random@<i>``, ``mde``) assign dimensions at ``cr`` and
    retrain from a fresh initialisation (MDE with its learned projections). Model selection uses
    validation only; test is read once, by the retraining (or evaluating) run.

    Args:
        cfg: the cell's config.
        method: the method name.
        cr: target compression rate (uniform parameters / kept parameters).
        seed: training seed.
        out_dir: the cell's directory.
        search_dir: where the search run lives; a budget-free search (:attr:`Method.budget_free`: DNIS /
            AutoSrh / AutoDim) serves every budget, so a comparison shares one per (search arch, method,
            seed). Default ``out_dir / "search"``.
        search_cfg: transferability: the config the search runs with (another arch, e.g. FM), the
            dimensions it finds being retrained on ``cfg``'s arch (:func:`transfer_config`: a fresh
            initialisation). Default ``cfg``.

    Returns:
        ``{"method", "cr", "target_cr", "seed", "val", "test", "params", "bytes", "search_time_s",
        "retrain_time_s", "dims", "field_dims", "signal", "split", "arch", "search_arch"}``: ``field_dims`` the
        kept dims per field (row mean and frequency-weighted), ``signal`` their Spearman with the planted
        ranks on synthetic data (else None), ``split`` the split each of ``val`` / ``test`` was read from
        (``val``: the selecting split; ``test``: read once), ``arch`` the arch retrained (or scored) and
        ``search_arch`` the arch the search ran with (None for baselines).

    Example::

        fm = override_config(cfg, ['model.arch="fm"'])
        cell = run_experiment(override_config(cfg, ['model.arch="nfm"']), "autodim", 4.0, 0, out, search_cfg=fm)
        cell["search_arch"], cell["dims"]["dims"]   # "fm", the FM-searched dims NFM retrained on
    """
    from recdim.config.methods import parse
    from recdim.export.retrained import export_step
    from recdim.retrain.shared_rows import dataset_rows, run_shared_rows
    from recdim.retrain.tiers import run_retrain
    from recdim.search.baselines.shared_rows import SharedRowsMethod
    from recdim.search.method import create
    from recdim.search.run import run_search

    out_dir = Path(out_dir)
    entry, arg = parse(method)
    m = create(entry.name, _for_cell(cfg, seed, cr))
    cfg = m.at_budget(cr)
    search_time = 0.0
    dims: Dict[str, Any] = {}
    if entry.kind == "search":
        searcher = create(entry.name, _for_cell(search_cfg, seed, cr)) if search_cfg is not None else m
        scfg = searcher.at_budget(cr)
        search_dir = Path(search_dir) if search_dir is not None else out_dir / "search"
        search = _done(search_dir) or run_search(scfg, search_dir, method=method)
        search_time = float(search["wall_time_s"])
        evaluate = getattr(m, "evaluate_searched", None)
        if callable(evaluate):  # scored as searched (AutoDim-s): no selection, no retraining
            if scfg.model.arch != cfg.model.arch:
                raise ValueError(f"{method} scores the searched model itself: it cannot transfer to another arch")
            result = _done(out_dir / "retrain") or evaluate(search_dir, out_dir / "retrain")
            return _cell_result(cfg, method, cr, seed, result, search_time, result["prune"].get("info", {}), scfg)
        cfg = transfer_config(cfg, scfg)
        pruned = prune_stage(cfg, None, [], search_dir, out_dir / "pruned")
        result = _done(out_dir / "retrain") or run_retrain(cfg, pruned[0], out_dir / "retrain", after=[export_step()])
        return _cell_result(cfg, method, cr, seed, result, search_time, result["prune"].get("info", {}), scfg)
    elif isinstance(m, SharedRowsMethod):  # QR, hashing: full-width rows shared between ids, trained as planned
        plan = m.sharing_plan(dataset_rows(cfg), cr, arg)
        result = _done(out_dir / "retrain") or run_shared_rows(cfg, plan, out_dir / "retrain", m.combine)
        return _cell_result(cfg, method, cr, seed, result, search_time, result["prune"].get("info", {}))
    else:
        assignment = m.assign(_train_counts(cfg), cr, arg)
        dims = assignment.summary()
        if assignment.projections:
            from recdim.retrain.mixed_dim import run_retrain_dims

            result = _done(out_dir / "retrain") or run_retrain_dims(cfg, assignment, out_dir / "retrain")
            return _cell_result(cfg, method, cr, seed, result, search_time, dims)
        pruned = [_write_assignment(cfg, assignment, out_dir / "pruned")]
    result = _done(out_dir / "retrain") or run_retrain(cfg, pruned[0], out_dir / "retrain", after=[export_step()])
    return _cell_result(cfg, method, cr, seed, result, search_time, dims or result["prune"].get("info", {}))


def _for_cell(cfg: Config, seed: int, cr: float) -> Config:
    """``cfg`` with the cell's training seed (no progress bar) and its one budget."""
    train = dataclasses.replace(cfg.train, seed=seed, progress=False)
    return dataclasses.replace(cfg, train=train, prune=dataclasses.replace(cfg.prune, crs=(cr,)))


def transfer_config(cfg: Config, search_cfg: Config) -> Config:
    """The retraining config of dimensions searched with ``search_cfg``: ``cfg`` itself on the same arch;
    on another arch ``cfg`` with ``prune.init = "fresh"``, since the searched arch's weights (and values
    learned with it) do not fit the target arch, which starts from a new initialisation.

    Raises:
        ValueError: when the two configs read different data, or when ``prune.retrain = "none"`` would
            score a freshly initialised model.

    Example::

        transfer_config(nfm_cfg, fm_cfg).prune.init   # "fresh"
    """
    if search_cfg.model.arch == cfg.model.arch:
        return cfg
    if search_cfg.data_path != cfg.data_path or search_cfg.data.features != cfg.data.features:
        raise ValueError("a transferred search must read the same data and features as the retraining")
    if search_cfg.model.embedding_dim != cfg.model.embedding_dim:
        raise ValueError(
            f"a transferred search must keep K: searched with {search_cfg.model.embedding_dim}, "
            f"retrained with {cfg.model.embedding_dim}"
        )
    if cfg.prune.retrain == "none":
        raise ValueError("prune.retrain = 'none' scores the searched model, which cannot move to another arch")
    return dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, init="fresh"))


def _cell_result(
    cfg: Config,
    method: str,
    cr: float,
    seed: int,
    result: Dict[str, Any],
    search_time: float,
    dims: Dict[str, Any],
    search_cfg: Optional[Config] = None,
) -> Dict[str, Any]:
    from recdim.layout.field_signal import planted_signal

    return {
        "method": method,
        "cr": result["prune"]["cr"],
        "target_cr": cr,
        "seed": seed,
        "val": result["val"],
        "test": result["test"],
        "params": result["params"],
        "bytes": result["bytes"],
        "search_time_s": search_time,
        "retrain_time_s": result["retrain_time_s"],
        "dims": dims,
        "field_dims": result.get("field_dims"),
        "signal": planted_signal(cfg, result.get("field_dims")),
        "split": {"val": "val", "test": "test"},
        "search_arch": None if search_cfg is None else search_cfg.model.arch,
        "arch": cfg.model.arch,
    }


def _train_counts(cfg: Config) -> Dict[str, Any]:
    """``{feature: [N] train counts}`` of the configured features, in provider order."""
    from recdim.data.prepared import PreparedDataset

    ds = PreparedDataset(cfg.data_path)
    return {f: ds.counts(f) for f in ds.feature_names(cfg.data.features)}


def _write_assignment(cfg: Config, assignment: Any, out: Path) -> Path:
    """A pruned-model directory holding a baseline's prefix dimensions (fresh initialisation)."""
    from recdim.layout.masks import mask_stats
    from recdim.layout.pruned import PrunedModel
    from recdim.prune.planner import PlannerConfig
    from recdim.prune.store import write_pruned

    masks = assignment.masks()
    pm = PrunedModel(assignment.method, mask_stats(masks)["cr"], masks, info={**assignment.summary(), "init": "fresh"})
    return write_pruned(out, pm, PlannerConfig(max_tiers=cfg.prune.max_tiers), {"baseline": assignment.method})
