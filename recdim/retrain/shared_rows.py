"""Training a row-sharing baseline (hashing trick, quotient-remainder) from a fresh initialisation.

These baselines do not assign dimensions: every id keeps a K-wide embedding, read from fewer rows than
there are ids (:mod:`recdim.layout.shared_rows`). The run trains a
:class:`~recdim.modules.hashed_embedding.HashedEmbeddingProvider` over the plan's layouts (tables by
``init_tables``, QR product remainder tables shifted to 1 + N(0, std^2)) and reports what
:func:`recdim.retrain.mixed_dim.run_retrain_dims` reports, so ``recdim compare`` sets it beside the
dimension-search methods at the same stored bytes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from recdim.config import Config
from recdim.fsio import write_json
from recdim.layout.shared_rows import SharedRows, SharingPlan
from recdim.modules.hashed_embedding import HashedEmbeddingProvider, QRCombine, hashed_provider_factory
from recdim.modules.table_init import local_pieces, table_state
from recdim.train.model_io import save_model
from recdim.train.run import Session, open_session, train_and_evaluate

LAYOUT_FILE = "layout.json"


def dataset_rows(cfg: Config) -> Dict[str, int]:
    """``{feature: N}`` of the configured features of ``cfg``'s prepared dataset, in provider order."""
    from recdim.data.prepared import PreparedDataset

    ds = PreparedDataset(cfg.data_path)
    return {f: int(ds.schema[f].num_embeddings) for f in ds.feature_names(cfg.data.features)}


@torch.no_grad()
def shift_tables(model: nn.Module, shifts: Mapping[str, float]) -> None:
    """Adds ``shifts[name]`` to every local piece of table ``name`` (whole or sharded) of ``model``.

    Example::

        init_tables(dmp, seed, std)
        shift_tables(dmp, provider.init_shifts())     # remainder tables at 1 + N(0, std^2)
    """
    for key, value in table_state(model):
        c = shifts.get(key.split(".")[-2])
        if c:
            for local, _, _ in local_pieces(value):
                local.add_(c)


def shared_rows_session(cfg: Config, layouts: List[SharedRows], combine: QRCombine, out_dir: Optional[Path]) -> Session:
    """A training session whose provider is a :class:`HashedEmbeddingProvider` over ``layouts`` (fresh,
    deterministic initialisation, initial shifts applied; sharded like any model).

    Args:
        cfg: the experiment config.
        layouts: one per feature the config uses.
        combine: how QR rows combine.
        out_dir: the run directory (checkpoints in ``<out_dir>/ckpt``), or None.

    Example::

        layouts, meta = read_layout(Path("runs/qr"))
        session = shared_rows_session(cfg, layouts, QRCombine(meta["combine"]), None)
        load_model(session.dmp, Path("runs/qr"))
    """
    session = open_session(cfg, hashed_provider_factory(layouts, combine), out_dir=out_dir)
    provider = session.model.provider
    assert isinstance(provider, HashedEmbeddingProvider)
    shift_tables(session.dmp, provider.init_shifts())
    return session


def write_layout(path: Path, plan: SharingPlan, combine: QRCombine) -> None:
    """Writes what a saved model needs to be rebuilt (``layout.json``)."""
    write_json(
        path,
        {
            "method": plan.method,
            "embedding_dim": plan.embedding_dim,
            "target_cr": plan.target_cr,
            "combine": combine.value,
            "layouts": [s.to_json() for s in plan.layouts],
        },
    )


def read_layout(run_dir: Path) -> Tuple[List[SharedRows], Dict[str, Any]]:
    """The layouts of a :func:`run_shared_rows` run, and the rest of its ``layout.json``."""
    data = json.loads((Path(run_dir) / LAYOUT_FILE).read_text())
    return [SharedRows.from_json(s) for s in data.pop("layouts")], data


def run_shared_rows(
    cfg: Config, plan: SharingPlan, out_dir: Path, combine: QRCombine = QRCombine.MULT
) -> Dict[str, Any]:
    """Trains a model on ``plan``'s row-sharing tables, evaluates it (validation selection, test read once),
    saves it and writes ``results.json``.

    Args:
        cfg: the experiment config (K = ``plan.embedding_dim``).
        plan: a layout per configured feature (:func:`~recdim.layout.shared_rows.hash_plan`,
            :func:`~recdim.layout.shared_rows.qr_plan`).
        out_dir: the run directory: ``results.json``, ``layout.json``, ``model/`` (and ``ckpt/`` when
            ``cfg.train.checkpoint_every`` is set).
        combine: how QR rows combine.

    Returns:
        The training results (``val``, ``test``, ``params``, ``bytes``, ...) plus ``prune`` (``method``,
        ``cr``: uniform / stored parameters, ``kept``, ``total``, ``info``: the plan's summary with
        ``combine``, ``tiers``: None), ``plan_bytes`` (``values``, ``divisors``, ``total``, ``uniform``,
        ``compression``) and ``retrain_time_s``.

    Example::

        plan = qr_plan(dataset_rows(cfg), cfg.model.embedding_dim, 4.0)
        results = run_shared_rows(cfg, plan, Path("runs/qr-cr4"))
        results["prune"]["cr"] >= 4.0, results["test"]
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if plan.embedding_dim != cfg.model.embedding_dim:
        raise ValueError(f"the plan is for K = {plan.embedding_dim}, the config has K = {cfg.model.embedding_dim}")
    session = shared_rows_session(cfg, list(plan.layouts), combine, out_dir)
    extra = sorted({s.feature for s in plan.layouts} - set(session.features))
    if extra:
        raise ValueError(f"the plan has features {extra} the config does not use")
    provider = session.model.provider
    assert isinstance(provider, HashedEmbeddingProvider)
    if provider.embedding_params() != plan.params:
        raise RuntimeError(f"the provider stores {provider.embedding_params():,} values, the plan {plan.params:,}")
    results = train_and_evaluate(session, None)
    results["prune"] = {
        "method": plan.method,
        "cr": plan.cr,
        "kept": plan.params,
        "total": plan.uniform_params,
        "info": {**plan.summary(), "combine": combine.value},
        "tiers": None,
    }
    total = provider.embedding_bytes()
    uniform = 4 * plan.uniform_params
    results["plan_bytes"] = {
        "values": 4 * plan.params,
        "divisors": total - 4 * plan.params,
        "total": total,
        "uniform": uniform,
        "compression": uniform / total,
    }
    save_model(session.dmp, out_dir, session.trainer.global_step, {"method": plan.method})
    results["retrain_time_s"] = time.perf_counter() - t0
    if session.ctx.is_main:
        write_layout(out_dir / LAYOUT_FILE, plan, combine)
        write_json(out_dir / "results.json", results)
    return results
