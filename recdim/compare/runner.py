"""``recdim compare``: runs every cell of the grid through ``run_experiment``, resumably, then reports.

Each cell (method x arch x budget x seed) writes ``<out>/runs/<run id>/cell.json`` when it finishes; a
cell whose file exists is skipped, so running the same command again resumes an interrupted comparison
(and retries failed cells, which leave ``failed.json`` instead). Grid and random search expand into
candidate runs (``ue@<d>``, ``random@<i>``), each saved under ``candidates/<name>/candidate.json`` as it
finishes; the cell reports the candidate best on validation, and its ``search_time_s`` is the time of
all candidates (the selection is the search), its ``retrain_time_s`` the chosen run's. With
``compare.tune`` every cell runs once per tuning setting (``tune/<label>/setting.json``; a shared search
per setting) and keeps the setting best on validation (:mod:`recdim.compare.tune`).

With ``compare.search_arch`` (transferability) every search method searches with that arch and each
cell retrains the dimensions found on its own arch; the searches are keyed by the search arch
(:attr:`Cell.search_id`), so one search serves every retrained arch and budget.

Resuming assumes the same experiment config: adding methods, arches, budgets or seeds extends the grid,
but a changed training or data setting makes old and new cells incomparable (a warning says so; use a
new output directory).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from tqdm import tqdm

from recdim.compare.grid import Cell, cell_config, config_echo, expand_grid, override_config
from recdim.compare.report import write_compare_report
from recdim.compare.select import choose_best, selection_record
from recdim.compare.tune import tune_grid
from recdim.config.baseline import BaselineConfig
from recdim.config.compare import CompareConfig, variant_base
from recdim.search.baselines.methods import candidate_methods

logger = logging.getLogger("recdim.compare")

Experiment = Callable[[Any, str, float, int, Path], Dict[str, Any]]
CELL_FILE = "cell.json"
FAILED_FILE = "failed.json"
CANDIDATE_FILE = "candidate.json"
TUNE_FILE = "setting.json"


@dataclass
class CompareSummary:
    """What :func:`run_compare` did.

    Args:
        out_dir: the comparison directory.
        cells: cells in the grid.
        ran: cells run now.
        skipped: cells already finished (resumed past).
        failed: ``run_id: error`` of cells that failed now.
        report: paths :func:`recdim.compare.report.write_compare_report` wrote.
    """

    out_dir: Path
    cells: int
    ran: int = 0
    skipped: int = 0
    failed: Dict[str, str] = field(default_factory=dict)
    report: Dict[str, Path] = field(default_factory=dict)


def default_experiment() -> Experiment:
    """``recdim.pipeline.run_experiment`` (imported on use)."""
    from recdim.pipeline import run_experiment

    return run_experiment


def _num_embeddings(cfg: Any) -> Optional[Dict[str, int]]:
    """``{feature: N}`` of the configured features, or None when the dataset is not there."""
    from recdim.data.prepared import PreparedDataset

    try:
        ds = PreparedDataset(cfg.data_path)
    except FileNotFoundError:
        return None
    return {f: int(ds.schema[f].num_embeddings) for f in ds.feature_names(cfg.data.features)}


def _baseline_config(cfg: Any) -> BaselineConfig:
    return getattr(cfg.search, "baseline", None) or BaselineConfig()


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    from recdim.fsio import write_json

    write_json(path, dict(data))


def _read_json(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text())


def _metrics_text(metrics: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {float(v):.4f}" for k, v in metrics.items() if isinstance(v, (int, float)))


def result_line(cell: Cell, record: Mapping[str, Any]) -> str:
    """One line per finished cell: test metrics, bytes and times."""
    r = record["result"]
    chosen = f" [{record['selection']['chosen']}]" if record.get("selection") else ""
    return (
        f"{cell.describe()}{chosen}: test {_metrics_text(r.get('test', {}))} | "
        f"{int(r.get('bytes', 0)):,} bytes | search {float(r.get('search_time_s', 0.0)):.1f} s, "
        f"retrain {float(r.get('retrain_time_s', 0.0)):.1f} s"
    )


def run_cell(
    cell: Cell,
    cfg: Any,
    compare: CompareConfig,
    experiment: Experiment,
    run_dir: Path,
    num_embeddings: Optional[Mapping[str, int]] = None,
    log: Callable[[str], None] = logger.info,
    search_cfg: Any = None,
) -> Dict[str, Any]:
    """Runs one cell (a single run, or every candidate of grid / random search; with ``compare.tune``,
    each of them once per tuning setting) and returns its record.

    Args:
        cell: the cell.
        cfg: the cell's config (:func:`recdim.compare.grid.cell_config`).
        compare: the grid settings (``select_metric``, ``tune``).
        experiment: ``run_experiment(cfg, method, cr, seed, out_dir) -> result``.
        run_dir: the cell's directory.
        num_embeddings: ``{feature: N}`` (grid search needs it to drop dimensions over the budget).
        log: where per-candidate lines go.
        search_cfg: the config a search method searches with when the cell transfers dimensions from
            another arch (:attr:`Cell.transfers`, ``cell_config`` of :meth:`Cell.search_cell`); passed on to
            the experiment as ``search_cfg``.

    Returns:
        ``{"cell", "result", "selection", "tuning", "uniform_params", "wall_s", "finished_at"}``;
        ``result`` is the (chosen) run's result, ``selection`` None for a single run, ``tuning`` None
        without ``compare.tune``, else the chosen setting and every setting's validation metrics
        (:func:`recdim.compare.select.selection_record`, plus ``values``). Under tuning the cell's
        ``search_time_s`` is the time of every setting and its ``retrain_time_s`` the chosen run's.
    """
    t0 = time.perf_counter()
    if variant_base(cell.method) == "grid" and num_embeddings is None:
        raise FileNotFoundError(f"{cfg.data_path}: grid search needs the prepared dataset's row counts")
    settings = tune_grid(compare.tune)
    runs_root = run_dir  # <out>/runs: where shared searches live
    for _ in cell.run_id.split("/"):
        runs_root = runs_root.parent
    tuning = None
    if not settings:
        result, selection = _run_setting(
            cell, cfg, compare, experiment, run_dir, num_embeddings, log, search_cfg, runs_root / cell.search_id
        )
    else:
        outs = []
        for s in settings:
            path = run_dir / "tune" / s.label / TUNE_FILE
            if path.exists():
                out = _read_json(path)
            else:
                tcfg = override_config(cfg, s.overrides)
                tscfg = override_config(search_cfg, s.overrides) if search_cfg is not None else None
                shared_search = runs_root / f"{cell.search_id}-{s.label}"
                r, sel = _run_setting(
                    cell, tcfg, compare, experiment, path.parent, num_embeddings, log, tscfg, shared_search
                )
                out = {"setting": s.to_json(), "result": r, "selection": sel}
                _write_json(path, out)
                log(f"  {cell.describe()} {s.describe()}: val {_metrics_text(r.get('val', {}))}")
            outs.append(out)
        results = [o["result"] for o in outs]
        best, metric, higher = choose_best(results, compare.select_metric)
        tuning = selection_record([s.describe() for s in settings], results, best, metric, higher)
        tuning["values"] = [s.to_json()["values"] for s in settings]
        tuning["chosen_values"] = settings[best].to_json()["values"]
        result, selection = dict(results[best]), outs[best]["selection"]
        others = sum(float(r.get("search_time_s", 0.0)) + float(r.get("retrain_time_s", 0.0)) for r in results)
        result["search_time_s"] = others - float(result.get("retrain_time_s", 0.0))
    uniform = result.get("uniform_params")
    if uniform is None and num_embeddings is not None:
        uniform = sum(num_embeddings.values()) * cfg.model.embedding_dim
    return {
        "cell": cell.to_json(),
        "result": result,
        "selection": selection,
        "tuning": tuning,
        "uniform_params": uniform,
        "wall_s": time.perf_counter() - t0,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _run_setting(
    cell: Cell,
    cfg: Any,
    compare: CompareConfig,
    experiment: Experiment,
    run_dir: Path,
    num_embeddings: Optional[Mapping[str, int]],
    log: Callable[[str], None],
    search_cfg: Any,
    search_dir: Path,
) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """One cell at one training setting: ``(result, selection)``; a budget-free search is shared in
    ``search_dir`` (``<out>/runs/<search id>``, suffixed by the tuning setting's label)."""
    K = cfg.model.embedding_dim
    method = variant_base(cell.method)  # a variant runs its registry method (its overrides are in cfg)
    names = candidate_methods(method, _baseline_config(cfg), num_embeddings or {}, K, cell.cr)
    if names == [method]:
        from recdim.config.methods import parse

        shared: Dict[str, Any] = {}
        entry, _ = parse(method)
        if entry.kind == "search" and entry.load().budget_free:  # one search serves every budget
            shared["search_dir"] = search_dir
        if entry.kind == "search" and cell.transfers:
            if search_cfg is None:
                raise ValueError(f"{cell.describe()}: a transferred search needs the search arch's config")
            shared["search_cfg"] = search_cfg
        result = dict(experiment(cfg, method, cell.cr, cell.seed, run_dir, **shared))
        return (dict(result, method=cell.method) if method != cell.method else result), None
    results = []
    for name in names:
        path = run_dir / "candidates" / name / CANDIDATE_FILE
        if path.exists():
            r = _read_json(path)
        else:
            r = dict(experiment(cfg, name, cell.cr, cell.seed, path.parent))
            _write_json(path, r)
            log(f"  {cell.describe()} candidate {name}: val {_metrics_text(r.get('val', {}))}")
        results.append(r)
    best, metric, higher = choose_best(results, compare.select_metric)
    selection = selection_record(names, results, best, metric, higher)
    result = dict(results[best])
    result["method"] = cell.method
    result["search_time_s"] = float(
        sum(float(r.get("search_time_s", 0.0)) + float(r.get("retrain_time_s", 0.0)) for r in results)
    )
    return result, selection


def run_compare(
    cfg: Any,
    out_dir: Optional[Union[str, Path]] = None,
    compare: Optional[CompareConfig] = None,
    experiment: Optional[Experiment] = None,
    prepare: bool = True,
    progress: bool = True,
) -> CompareSummary:
    """Runs (or resumes) the whole comparison grid and writes the report.

    Args:
        cfg: the experiment config; its ``compare`` section is the grid unless ``compare`` is given.
        out_dir: comparison directory (default ``compare.output``).
        compare: the grid settings (default ``cfg.compare``).
        experiment: the function each run calls (default ``recdim.pipeline.run_experiment``).
        prepare: prepare the dataset first when it is missing.
        progress: show a progress bar (finished cells are always printed, one line each).

    Returns:
        CompareSummary: counts of cells run / skipped / failed and the report paths.

    Example::

        summary = run_compare(load("configs/compare_small.toml"))
        print(summary.report["markdown"].read_text())
    """
    compare = compare if compare is not None else cfg.compare
    out = Path(out_dir) if out_dir is not None else Path(compare.output)
    cells = expand_grid(compare, cfg.model.arch)
    configs = {cell: cell_config(cfg, compare, cell) for cell in cells}  # every cell validated up front
    for setting in tune_grid(compare.tune):  # and every tuning setting of each
        for c in configs.values():
            override_config(c, setting.overrides)
    search_configs = {c: cell_config(cfg, compare, c.search_cell()) for c in cells if c.transfers}
    if prepare:
        from recdim.pipeline import ensure_prepared

        for path in sorted({c.data_path for c in configs.values()}):
            ensure_prepared(next(c for c in configs.values() if c.data_path == path))
    summary = CompareSummary(out_dir=out, cells=len(cells))
    todo = [c for c in cells if not (out / "runs" / c.run_id / CELL_FILE).exists()]
    summary.skipped = len(cells) - len(todo)
    echo = out / "compare_config.json"
    if echo.exists() and _read_json(echo).get("config") != json.loads(json.dumps(config_echo(cfg))):
        tqdm.write(
            f"warning: {echo} was written with a different config; finished cells keep their old results",
            file=sys.stderr,
        )
    _write_json(echo, {"config": config_echo(cfg), "compare": config_echo(compare)})
    if todo and experiment is None:
        experiment = default_experiment()
    rows: Dict[str, Optional[Dict[str, int]]] = {}
    bar = tqdm(total=len(cells), initial=summary.skipped, desc="compare", unit="cell", disable=not progress)
    if summary.skipped:
        tqdm.write(f"resuming: {summary.skipped} of {len(cells)} cells already finished in {out}")
    try:
        for cell in todo:
            run_dir = out / "runs" / cell.run_id
            ccfg = configs[cell]
            if ccfg.data_path not in rows:
                rows[ccfg.data_path] = _num_embeddings(ccfg)
            bar.set_postfix_str(cell.describe())
            try:
                record = run_cell(
                    cell,
                    ccfg,
                    compare,
                    experiment,
                    run_dir,
                    rows[ccfg.data_path],
                    tqdm.write,
                    search_configs.get(cell),
                )
            except Exception as e:  # noqa: BLE001 - a failed cell is recorded; the grid goes on
                if compare.stop_on_error:
                    raise
                _write_json(
                    run_dir / FAILED_FILE,
                    {"cell": cell.to_json(), "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()},
                )
                summary.failed[cell.run_id] = f"{type(e).__name__}: {e}"
                tqdm.write(f"FAILED {cell.describe()}: {type(e).__name__}: {e}")
            else:
                _write_json(run_dir / CELL_FILE, record)
                (run_dir / FAILED_FILE).unlink(missing_ok=True)
                summary.ran += 1
                tqdm.write(result_line(cell, record))
            bar.update(1)
    finally:
        bar.close()
    summary.report = write_compare_report(out, method_order=compare.methods, arch_order=compare.arches)
    return summary
