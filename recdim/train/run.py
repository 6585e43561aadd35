"""``recdim train``: prepared data + config -> trained model, metrics and ``results.json``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from recdim.config import Config
from recdim.config.search_split import SearchSplitConfig
from recdim.config_io import to_dict
from recdim.data.loader import EvalLoader, TrainLoader
from recdim.data.prepared import PreparedDataset, SplitArrays
from recdim.data.search_split import carve_search_split
from recdim.fsio import write_json
from recdim.models.rec_model import RecModel
from recdim.modules.table_init import init_tables
from recdim.train.build import ProviderFactory, build_model, uniform_provider
from recdim.train.checkpoint import Checkpointer
from recdim.train.distributed import DistContext, build_optimizer, init_distributed, shard_model
from recdim.train.hooks import StepHook
from recdim.train.memory import peak_memory
from recdim.train.model_io import save_model
from recdim.train.ranking import RankingEvaluator, build_topk
from recdim.train.resume import CheckpointHook
from recdim.train.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class Session:
    """Everything a training command holds: data, the sharded model, its trainer and loaders."""

    cfg: Config
    ctx: DistContext
    dataset: PreparedDataset
    features: List[str]
    splits: Dict[str, SplitArrays]
    model: RecModel
    dmp: Any
    trainer: Trainer
    train_loader: TrainLoader  # a NegativeSamplingLoader for train.task = "topk"
    val_loader: EvalLoader  # a RankingEvaluator for train.task = "topk"

    def eval_loader(self, split: str) -> EvalLoader:
        if isinstance(self.val_loader, RankingEvaluator):
            return self.val_loader.for_split(split)
        weighted = self.dataset.schema.is_weighted
        return EvalLoader(
            self.splits[split],
            self.features,
            self.cfg.train.eval_batch_size,
            self.ctx.rank,
            self.ctx.world_size,
            weighted,
        )


def json_config(cfg: Config) -> Dict[str, Any]:
    """``cfg`` as plain JSON values (tuples as lists), as checkpoints record it."""
    return json.loads(json.dumps(to_dict(cfg)))


def open_session(
    cfg: Config,
    provider_factory: ProviderFactory = uniform_provider,
    hooks: Callable[["Session"], Sequence[StepHook]] = lambda s: (),
    out_dir: Optional[Path] = None,
    search_split: Optional[SearchSplitConfig] = None,
) -> Session:
    """Loads data, builds and shards the model, initialises tables and makes the trainer.

    Args:
        cfg: the experiment config.
        provider_factory: which embedding provider to build (the uniform baseline by default).
        hooks: builds the step hooks once the session exists (search methods use this).
        out_dir: the run directory. When given, training writes sharded checkpoints to
            ``<out_dir>/ckpt`` every ``cfg.train.checkpoint_every`` steps and resumes from the latest
            one found there (:class:`~recdim.train.resume.CheckpointHook`, installed last).
        search_split: when given, carve ``splits["search"]`` from train (:mod:`recdim.data.search_split`);
            the tables then train on the remaining rows, and the architecture steps of a search read the
            search split, never the validation split.
    """
    ctx = init_distributed(cfg.train.device)
    ds = PreparedDataset(cfg.data_path)
    features = ds.feature_names(cfg.data.features)
    splits = {s: ds.load_split(s, features) for s in ("train", "val", "test")}
    if search_split is not None:
        splits["train"], splits["search"] = carve_search_split(
            splits["train"], search_split.fraction, search_split.seed
        )
        log.info(
            "search split: %d train rows held out, %d left to train on", len(splits["search"]), len(splits["train"])
        )
    model = build_model(cfg, ds, features, splits["train"], provider_factory)
    dmp = shard_model(model, cfg.train, ctx)
    init_tables(dmp, cfg.train.seed, cfg.train.init_std)
    optimizer = build_optimizer(dmp, cfg.train, ctx)
    weighted = ds.schema.is_weighted
    train_loader = TrainLoader(
        splits["train"], features, cfg.train.batch_size, ctx.rank, ctx.world_size, cfg.train.seed, weighted
    )
    val_loader = EvalLoader(splits["val"], features, cfg.train.eval_batch_size, ctx.rank, ctx.world_size, weighted)
    if cfg.train.task == "topk":  # sampled negatives for training, full ranking for validation / test
        topk = build_topk(cfg.train, ds.schema, features, splits, ctx.rank, ctx.world_size)
        train_loader, val_loader = topk.train_loader, topk.val
    trainer = Trainer(dmp, optimizer, ds.schema.label, cfg.train, ctx)
    session = Session(cfg, ctx, ds, features, splits, model, dmp, trainer, train_loader, val_loader)
    trainer.hooks = list(hooks(session))
    if out_dir is not None:
        checkpointer = Checkpointer(Path(out_dir) / "ckpt", keep=cfg.train.keep_checkpoints)
        hook = CheckpointHook(checkpointer, cfg.train.checkpoint_every, json_config(cfg), cfg.train.resume)
        trainer.hooks.append(hook)
    return session


def _session_facts(session: Session) -> Dict[str, Any]:
    """What every ``results.json`` records about where a model ran: world, device, features, split rows,
    peak memory, config and dataset."""
    return {
        "world_size": session.ctx.world_size,
        "device": str(session.ctx.device),
        "features": session.features,
        "split_rows": {name: len(split) for name, split in session.splits.items()},
        "memory": peak_memory(),
        "config": to_dict(session.cfg),
        "dataset": str(session.dataset.path),
    }


def train_and_evaluate(
    session: Session, out_dir: Optional[Path], extra: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Trains with validation-only model selection, reads test once, writes ``results.json`` (rank 0)."""
    t0 = time.perf_counter()
    trainer = session.trainer
    untrained_val = trainer.evaluate(session.val_loader)
    fit = trainer.fit(session.train_loader, session.val_loader)
    test = trainer.evaluate(session.eval_loader("test"))
    provider = session.model.provider
    results: Dict[str, Any] = {
        "val": fit.best_val,
        "test": test,
        "untrained_val": untrained_val,
        "params": provider.embedding_params(),
        "bytes": provider.embedding_bytes(),
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history),
        "steps": fit.steps,
        "resumed_from_step": fit.resumed_from_step,
        "train_time_s": fit.train_time_s,
        "samples_per_s": fit.samples_per_s,
        "wall_time_s": time.perf_counter() - t0,
        "history": fit.history,
        "search": {k: v for h in trainer.hooks for k, v in h.state().items()},
        **_session_facts(session),
    }
    changes = [c for h in trainer.hooks if isinstance(h, CheckpointHook) for c in h.config_changes]
    if changes:
        results["config_changes_on_resume"] = changes
    if extra:
        results.update(extra)
    if out_dir is not None and session.ctx.is_main:
        write_json(Path(out_dir) / "results.json", results)
    return results


def evaluate_as_is(session: Session) -> Dict[str, Any]:
    """Validation and test metrics of the session's model as it stands, without a training step (e.g. a
    pruned model scored before retraining: AutoSrh's \\R ablation). Same keys as :func:`train_and_evaluate`
    where they apply; ``steps`` is 0.
    """
    t0 = time.perf_counter()
    trainer, provider = session.trainer, session.model.provider
    return {
        "val": trainer.evaluate(session.val_loader),
        "test": trainer.evaluate(session.eval_loader("test")),
        "params": provider.embedding_params(),
        "bytes": provider.embedding_bytes(),
        "best_epoch": None,
        "epochs_run": 0,
        "steps": 0,
        "history": [],
        "wall_time_s": time.perf_counter() - t0,
        **_session_facts(session),
    }


def run_train(cfg: Config, out_dir: Optional[Path]) -> Dict[str, Any]:
    """The uniform-dimension baseline, end to end: with ``out_dir``, the trained model is saved to
    ``<out_dir>/model`` (``recdim export --from`` reads it) before ``results.json`` is written.

    Example::

        results = run_train(load("configs/ml100k_rating.toml"), Path("runs/mf"))
        results["test"]["mse"]
    """
    session = open_session(cfg, out_dir=out_dir)
    results = train_and_evaluate(session, None)
    if out_dir is not None:
        save_model(session.dmp, out_dir, session.trainer.global_step, {"method": "uniform"})
        if session.ctx.is_main:
            write_json(Path(out_dir) / "results.json", results)
    return results
