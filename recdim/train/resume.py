"""What a training checkpoint holds, how a trainer resumes from one, and the hook that writes them.

A checkpoint of a :class:`~recdim.train.trainer.Trainer` holds, as DCP tensors:

- ``model``: the DMP state dict: tables as ShardedTensors, dense parts, and the method parameters that
  live in the model (DNIS alpha, PEP thresholds, ...);
- ``optim``: the combined optimizer's state: the fused table optimizer's (sharded, e.g. row-wise
  Adagrad's momentum) and Adam's for the dense parts;
- ``best``: the best-so-far model for validation-based model selection (same layout as ``model``),
  once an epoch has been validated;
- ``rng``: each rank's torch RNG state (CPU, and CUDA on GPU);
- ``hooks``: the state of every step hook that implements ``state_dict`` / ``load_state_dict``
  (:class:`torch.distributed.checkpoint.stateful.Stateful`);

and, as JSON: the global step, the epoch and the step within it (the data loader's position: batches
are a pure function of seed, epoch and step), the epoch's losses so far, the best validation value and
the early-stopping counter, the history, and the world size that wrote it.

Resuming on another world size reshards tables and optimizer state; the data order is unchanged
(batches are global); the RNG states are restored only on the same world size (otherwise each rank
keeps its seeded stream, which only matters for dropout).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
from torch.distributed.checkpoint.stateful import Stateful
from torchrec.datasets.utils import Batch
from torchrec.optim.keyed import KeyedOptimizerWrapper

from recdim.config import Config
from recdim.config_io import to_dict
from recdim.train.checkpoint import Checkpointer
from recdim.train.faults import maybe_crash
from recdim.train.hooks import StepHook
from recdim.train.trainer import FitResult, FitState, Trainer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _pieces_state(template: Dict[str, Any], pieces: Dict[str, List[torch.Tensor]]) -> Dict[str, Any]:
    """A state dict shaped like ``template`` whose tensors are ``pieces`` (a :func:`snapshot`): each
    ShardedTensor's local shards are replaced by the snapshot's tensors, in order."""
    out: Dict[str, Any] = {}
    for key, value in template.items():
        if key not in pieces:
            continue
        if isinstance(value, ShardedTensor):
            shards = [Shard(t, s.metadata) for t, s in zip(pieces[key], value.local_shards())]
            out[key] = ShardedTensor._init_from_local_shards_and_global_metadata(
                shards, value.metadata(), process_group=value._process_group
            )
        else:
            out[key] = pieces[key][0]
    return out


def _empty_pieces(template: Dict[str, Any]) -> Dict[str, List[torch.Tensor]]:
    """Uninitialised tensors shaped like this rank's part of every entry of ``template``."""
    out: Dict[str, List[torch.Tensor]] = {}
    for key, value in template.items():
        if isinstance(value, ShardedTensor):
            out[key] = [torch.empty_like(s.tensor) for s in value.local_shards()]
        elif isinstance(value, torch.Tensor):
            out[key] = [torch.empty_like(value)]
    return out


def _rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _stateful_hooks(trainer: Trainer) -> Dict[str, Stateful]:
    return {f"{i}_{type(h).__name__}": h for i, h in enumerate(trainer.hooks) if isinstance(h, Stateful)}


def _init_optimizer_state(optimizer: Any) -> None:
    """Creates the lazily built state of the dense (Adam) optimizers so a checkpoint can load into it.

    Their dummy step may move parameters (weight decay); the model is loaded afterwards."""
    for _, opt in getattr(optimizer, "optimizers", []):
        if isinstance(opt, KeyedOptimizerWrapper) and not opt.state:
            opt.init_state()


def _drop_empty(d: Dict[str, Any], prefix: Tuple[str, ...] = ()) -> List[Tuple[str, ...]]:
    """Removes empty dicts from ``d`` (recursively, in place) and returns their key paths.

    A stateless table optimizer (fused SGD) has an empty state per table; DCP writes nothing for it, so a
    load that asked for it would find a missing key.
    """
    dropped: List[Tuple[str, ...]] = []
    for k in list(d):
        v = d[k]
        if isinstance(v, dict):
            dropped += _drop_empty(v, prefix + (k,))
            if not v:
                del d[k]
                dropped.append(prefix + (k,))
    return dropped


def _restore_empty(d: Dict[str, Any], paths: List[Tuple[str, ...]]) -> None:
    """Puts back the empty dicts :func:`_drop_empty` removed."""
    for path in paths:
        node = d
        for k in path:
            node = node.setdefault(k, {})


def training_state(trainer: Trainer) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """This rank's part of the trainer's state now: ``(DCP state dict, JSON meta)``.

    Args:
        trainer: a trainer inside :meth:`Trainer.fit` (its ``fit_state`` is current).

    Returns:
        The tensors (``model``, ``optim``, ``rng``, and ``best`` / ``hooks`` when there are any) and the
        JSON-ready progress.
    """
    st = trainer.fit_state
    model_state = trainer.model.state_dict()
    state: Dict[str, Any] = {
        "model": model_state,
        "optim": trainer.optimizer.state_dict(),
        "rng": {f"rank{trainer.ctx.rank}": _rng_state(trainer.ctx.device)},
    }
    if st.best_state is not None:
        state["best"] = _pieces_state(model_state, st.best_state)
    hooks = _stateful_hooks(trainer)
    if hooks:
        state["hooks"] = {k: h.state_dict() for k, h in hooks.items()}
    meta = {
        "format": FORMAT_VERSION,
        "global_step": trainer.global_step,
        "epoch": trainer.epoch,
        "step_in_epoch": st.step_in_epoch,
        "epoch_losses": st.epoch_losses,
        "best_value": st.best_value,
        "has_best": st.best_state is not None,
        "stale": st.stale,
        "world_size": trainer.ctx.world_size,
        "result": dataclasses.asdict(st.result),
    }
    return state, meta


def load_training_state(trainer: Trainer, checkpointer: Checkpointer, path: Any) -> Dict[str, Any]:
    """Restores a trainer from checkpoint ``path`` (written on any world size). Collective.

    Model, optimizer, best snapshot, stateful hooks, RNG (same world size only), step counters and
    ``fit_state`` are restored; :meth:`Trainer.fit` then continues where the checkpoint was taken.

    Args:
        trainer: a trainer built like the one that wrote the checkpoint (same model and optimizer).
        checkpointer: the run's checkpoints.
        path: a committed checkpoint folder.

    Returns:
        The checkpoint's JSON meta.

    Example::

        meta = load_training_state(session.trainer, ckpt, ckpt.latest())
        meta["global_step"]
    """
    meta = checkpointer.read_meta(path)
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format {meta.get('format')}, this recdim reads {FORMAT_VERSION}")
    _init_optimizer_state(trainer.optimizer)
    model_state = trainer.model.state_dict()
    state: Dict[str, Any] = {"model": model_state, "optim": trainer.optimizer.state_dict()}
    best = _empty_pieces(model_state) if meta["has_best"] else None
    if best is not None:
        state["best"] = _pieces_state(model_state, best)
    hooks = _stateful_hooks(trainer)
    if hooks:
        state["hooks"] = {k: h.state_dict() for k, h in hooks.items()}
    rng_key = f"rank{trainer.ctx.rank}"
    same_world = meta["world_size"] == trainer.ctx.world_size
    if same_world:
        state["rng"] = {rng_key: _rng_state(trainer.ctx.device)}
    empty = _drop_empty(state)
    checkpointer.load(path, state)
    _restore_empty(state, empty)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optim"])
    for k, h in hooks.items():
        h.load_state_dict(state["hooks"][k])
    if same_world:
        _set_rng_state(state["rng"][rng_key], trainer.ctx.device)
    trainer.global_step, trainer.epoch = meta["global_step"], meta["epoch"]
    trainer.fit_state = FitState(
        result=FitResult(**meta["result"]),
        step_in_epoch=meta["step_in_epoch"],
        epoch_losses=list(meta["epoch_losses"]),
        best_value=meta["best_value"],
        best_state=best,
        stale=meta["stale"],
    )
    return meta


class CheckpointHook(StepHook):
    """Writes a sharded checkpoint every ``every`` steps; when training starts, resumes from the latest.

    Install it last among the trainer's hooks, so that it saves after the other hooks' step work and
    restores their state after their ``on_train_start``. A restarted job (torchrun ``--max-restarts``,
    a scheduler retry, or the same command run again) therefore continues from the last checkpoint and
    loses at most ``every`` steps.

    Args:
        checkpointer: the run's checkpoint folder.
        every: steps between checkpoints; 0 writes none (the hook then only resumes).

    Example::

        trainer.hooks.append(CheckpointHook(Checkpointer(out_dir / "ckpt", keep=2), every=500))
        trainer.fit(train_loader, val_loader)   # resumes when out_dir/ckpt/latest exists
    """

    def __init__(
        self, checkpointer: Checkpointer, every: int, config: Optional[Dict[str, Any]] = None, resume: str = "check"
    ) -> None:
        if every < 0:
            raise ValueError(f"checkpoint interval must be >= 0 steps, got {every}")
        if resume not in ("check", "fresh", "continue"):
            raise ValueError(f"resume must be 'check', 'fresh' or 'continue', got {resume!r}")
        self.checkpointer = checkpointer
        self.every = every
        self.config = config
        self.resume = resume
        self.config_changes: List[str] = []

    def on_train_start(self, trainer: Trainer) -> None:
        path = self.checkpointer.latest()
        if path is None:
            return
        if self.config is not None:
            saved = Checkpointer.read_meta(path).get("config")
            defaults = to_dict(Config())
            changes = config_changes(saved, self.config, defaults) if saved is not None else ["(no config recorded)"]
            if changes and self.resume == "fresh":
                log.warning("%s: written with another config; starting over (train.resume = fresh)", path)
                return
            if changes and self.resume == "check":
                raise ValueError(
                    f"{path}: this run was checkpointed with another config ({'; '.join(changes)}). "
                    "Use a new --out, or --set train.resume=fresh to start over, or --set train.resume=continue "
                    "to resume with the new config"
                )
            self.config_changes = changes
            if changes:
                log.warning("%s: resuming with a changed config: %s", path, "; ".join(changes))
        meta = load_training_state(trainer, self.checkpointer, path)
        trainer.fit_state.result.resumed_from_step = meta["global_step"]
        if trainer.ctx.is_main:
            log.info(
                "resumed from %s (step %d, epoch %d, step %d of the epoch; written by %d ranks)",
                path,
                meta["global_step"],
                meta["epoch"],
                meta["step_in_epoch"],
                meta["world_size"],
            )

    def after_step(self, trainer: Trainer, step: int, batch: Batch) -> None:
        if self.every and step % self.every == 0:
            state, meta = training_state(trainer)
            if self.config is not None:
                meta["config"] = self.config
            self.checkpointer.save(step, state, meta)
        maybe_crash("after_step", trainer.ctx.rank, step)


# Keys that change what is printed or how often checkpoints are written, never the run's results.
OUTPUT_ONLY = ("train.progress", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.resume")


def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_changes(
    saved: Dict[str, Any], current: Dict[str, Any], defaults: Optional[Dict[str, Any]] = None
) -> List[str]:
    """``"key: old -> new"`` for every config value that differs, output-only keys left out.

    A key the saved config does not have (a setting added since it was written) counts as unchanged
    when its current value is its default in ``defaults`` (the default config, as a dict).

    Example::

        config_changes({"train": {"lr": 0.001}}, {"train": {"lr": 0.01}})   # ["train.lr: 0.001 -> 0.01"]
    """
    a, b, d = _flat(saved), _flat(current), _flat(defaults or {})
    keys = sorted(
        k
        for k in set(a) | set(b)
        if k not in OUTPUT_ONLY
        and a.get(k, "<unset>") != b.get(k, "<unset>")
        and not (k not in a and k in d and b.get(k) == d[k])
    )
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys]
