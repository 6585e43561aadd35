"""Retraining a dimension assignment on mixed-dimension tables (MDE: per-block widths and projections).

The baselines of :mod:`recdim.search.baselines` assign dimensions without training; MDE's layout needs
learnable ``[d_b, K]`` projections, which the tier tables have no place for, so its run trains a
:class:`~recdim.modules.mixed_dim.MixedDimensionProvider` from a fresh initialisation (tables by
``init_tables``, projections from the build seed) and reports what :func:`recdim.retrain.tiers.run_retrain`
reports.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from recdim.config import Config
from recdim.fsio import write_json
from recdim.layout.dims import DimAssignment
from recdim.modules.mixed_dim import MixedDimensionProvider, Segment, blocks_from_assignment, mixed_dim_provider_factory
from recdim.train.model_io import save_model
from recdim.train.run import Session, open_session, train_and_evaluate

LAYOUT_FILE = "layout.json"


def mixed_dim_session(cfg: Config, blocks: Sequence[Segment], out_dir: Optional[Path]) -> Session:
    """A training session whose provider is a :class:`MixedDimensionProvider` over ``blocks`` (fresh,
    deterministic initialisation; sharded like any model).

    Args:
        cfg: the experiment config (its K must be the blocks').
        blocks: tile every feature the config uses.
        out_dir: the run directory (checkpoints in ``<out_dir>/ckpt``), or None.

    Example::

        session = mixed_dim_session(cfg, read_layout(Path("runs/mde"))[0], None)
        load_model(session.dmp, Path("runs/mde"))
    """
    return open_session(cfg, mixed_dim_provider_factory(blocks, cfg.model.embedding_dim), out_dir=out_dir)


def write_layout(path: Path, assignment: DimAssignment, blocks: Sequence[Segment]) -> None:
    """Writes the blocks a saved model needs to be rebuilt (``layout.json``)."""
    write_json(
        path,
        {
            "method": assignment.method,
            "embedding_dim": assignment.embedding_dim,
            "blocks": [b.to_json() for b in blocks],
        },
    )


def read_layout(run_dir: Path) -> Tuple[List[Segment], Dict[str, Any]]:
    """The blocks of a :func:`run_retrain_dims` run, and the rest of its ``layout.json``."""
    data = json.loads((Path(run_dir) / LAYOUT_FILE).read_text())
    return [Segment.from_json(b) for b in data.pop("blocks")], data


def run_retrain_dims(cfg: Config, assignment: DimAssignment, out_dir: Path) -> Dict[str, Any]:
    """Trains a model on ``assignment``'s mixed-dimension layout, evaluates it (validation selection, test
    read once), saves it and writes ``results.json``.

    Args:
        cfg: the experiment config (K = ``assignment.embedding_dim``).
        assignment: per-row dimensions and projections (e.g. ``baseline_dims("mde", ...)``); every
            projection's rows share its width. Rows without a projection are zero-padded to K.
        out_dir: the run directory: ``results.json``, ``layout.json``, ``model/`` (and ``ckpt/`` when
            ``cfg.train.checkpoint_every`` is set).

    Returns:
        The training results (``val``, ``test``, ``params``, ``bytes``, ...) plus ``prune`` (``method``,
        ``cr``: uniform / kept parameters with projections, ``kept``, ``total``, ``info``: the
        assignment's summary, ``tiers``: None), ``plan_bytes`` (``values``, ``projections``,
        ``boundaries``, ``total``, ``uniform``, ``compression``) and ``retrain_time_s``.

    Example::

        a = baseline_dims("mde", cfg.search.baseline, counts, cfg.model.embedding_dim, 4.0)
        results = run_retrain_dims(cfg, a, Path("runs/mde-cr4"))
        results["test"], results["params"] == a.params
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if assignment.embedding_dim != cfg.model.embedding_dim:
        raise ValueError(
            f"assignment is for K = {assignment.embedding_dim}, the config has K = {cfg.model.embedding_dim}"
        )
    blocks = blocks_from_assignment(assignment)
    session = mixed_dim_session(cfg, blocks, out_dir)
    missing = sorted(set(assignment.dims) - set(session.features))
    if missing:
        raise ValueError(f"the assignment has features {missing} the config does not use")
    provider = session.model.provider
    assert isinstance(provider, MixedDimensionProvider)
    if provider.embedding_params() != assignment.params:
        raise RuntimeError(
            f"the provider stores {provider.embedding_params():,} values, the assignment counts {assignment.params:,}"
        )
    results = train_and_evaluate(session, None)
    results["prune"] = {
        "method": assignment.method,
        "cr": assignment.cr,
        "kept": assignment.params,
        "total": assignment.uniform_params,
        "info": assignment.summary(),
        "tiers": None,
    }
    values = provider.embedding_params() - provider.projection_params()
    total = provider.embedding_bytes()
    results["plan_bytes"] = {
        "values": 4 * values,
        "projections": 4 * provider.projection_params(),
        "boundaries": total - 4 * provider.embedding_params(),
        "total": total,
        "uniform": 4 * assignment.uniform_params,
        "compression": 4 * assignment.uniform_params / total if total else float("inf"),
    }
    save_model(session.dmp, out_dir, session.trainer.global_step, {"method": assignment.method})
    results["retrain_time_s"] = time.perf_counter() - t0
    if session.ctx.is_main:
        write_layout(out_dir / LAYOUT_FILE, assignment, blocks)
        write_json(out_dir / "results.json", results)
    return results
