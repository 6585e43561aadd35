"""The training loop: one code path for one process or many, with validation-only model selection."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn
from tqdm import tqdm

from recdim.config import TrainConfig
from recdim.data.loader import EvalLoader, TrainLoader
from recdim.data.negatives import NegativeSamplingLoader
from recdim.data.schema import LabelKind
from recdim.modules.table_init import restore, snapshot
from recdim.train.distributed import DistContext
from recdim.train.hooks import StepHook
from recdim.train.metrics import compute_metrics, gather
from recdim.train.ranking import RankingEvaluator


def primary_metric(label_kind: LabelKind) -> tuple[str, bool]:
    """``(name, higher_is_better)`` of the metric used for model selection and early stopping."""
    return ("auc", True) if label_kind == LabelKind.BINARY else ("mse", False)


def selection_metric(label_kind: LabelKind, cfg: TrainConfig) -> tuple[str, bool]:
    """``(name, higher_is_better)`` of the validation metric that selects the epoch: ``cfg.ranking.select``
    for top-k recommendation (every ranking metric is higher-is-better), else :func:`primary_metric`."""
    return (cfg.ranking.select, True) if cfg.task == "topk" else primary_metric(label_kind)


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` saw: per-epoch history, the best validation epoch and its metrics."""

    history: List[Dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_val: Dict[str, float] = field(default_factory=dict)
    steps: int = 0
    train_time_s: float = 0.0
    samples: int = 0
    resumed_from_step: Optional[int] = None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.train_time_s if self.train_time_s > 0 else 0.0


@dataclass
class FitState:
    """Where :meth:`Trainer.fit` stands within training: what a checkpoint saves and a resumed run
    continues from (with ``Trainer.epoch`` and ``Trainer.global_step``).

    Args:
        result: history and counters so far.
        step_in_epoch: training steps already taken in the current epoch.
        epoch_losses: the training losses of those steps.
        best_value: the best validation value of the primary metric so far.
        best_state: this rank's snapshot of the model at that epoch (:func:`~recdim.modules.table_init.snapshot`).
        stale: epochs since the best one (the early-stopping counter).
    """

    result: FitResult = field(default_factory=FitResult)
    step_in_epoch: int = 0
    epoch_losses: List[float] = field(default_factory=list)
    best_value: Optional[float] = None
    best_state: Optional[Dict[str, list]] = None
    stale: int = 0


class Trainer:
    """Trains a (sharded) model with its combined optimizer; evaluates globally over whole splits.

    Each step: forward on this rank's part of the global batch, mean loss, backward (the fused table
    optimizer updates the tables during backward), then one step of the dense optimizer. After every
    epoch the validation split is scored globally (AUC / logloss, or MSE; for ``train.task = "topk"`` a
    :class:`~recdim.train.ranking.RankingEvaluator` ranks every item per user and ``ranking.select``
    picks the epoch); the best epoch's state is kept and restored at the end, and training stops after
    ``patience`` epochs without improvement. Test is never read here.

    Args:
        model: the DistributedModelParallel model; called as ``model(dense, kjt) -> [B]``.
        optimizer: optimizer for the parameters not trained in backward.
        label_kind: picks the loss (BCE with logits, or MSE) and the metrics.
        cfg: epochs, patience, max steps, progress.
        ctx: the process group.
        hooks: search-method hooks (see :class:`StepHook`).

    Example::

        trainer = Trainer(dmp, build_optimizer(dmp, cfg.train, ctx), LabelKind.BINARY, cfg.train, ctx)
        result = trainer.fit(train_loader, val_loader)
        test_metrics = trainer.evaluate(test_loader)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        label_kind: LabelKind,
        cfg: TrainConfig,
        ctx: DistContext,
        hooks: Sequence[StepHook] = (),
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.label_kind = label_kind
        self.cfg = cfg
        self.ctx = ctx
        self.hooks = list(hooks)
        self.loss_fn: nn.Module = nn.BCEWithLogitsLoss() if label_kind == LabelKind.BINARY else nn.MSELoss()
        self.selection = selection_metric(label_kind, cfg)
        self.global_step = 0
        self.epoch = 0
        self.fit_state = FitState()

    def loss(self, batch: Any) -> torch.Tensor:
        """Mean loss of this rank's part of a batch."""
        batch = batch.to(self.ctx.device)
        out = self.model(batch.dense_features, batch.sparse_features)
        return self.loss_fn(out, batch.labels)

    def train_step(self, batch: Any) -> float:
        self.model.train()
        self.optimizer.zero_grad()
        loss = self.loss(batch)
        loss.backward()
        self.optimizer.step()
        self.global_step += 1
        return float(loss.detach())

    @torch.no_grad()
    def predict(self, loader: EvalLoader) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and labels of every row of the split, gathered from all ranks (float64)."""
        self.model.eval()
        outs, labels = [], []
        for batch, n_valid in loader:
            batch = batch.to(self.ctx.device)
            out = self.model(batch.dense_features, batch.sparse_features)
            outs.append(out[:n_valid].double().cpu())
            labels.append(batch.labels[:n_valid].double().cpu())
        out_t = torch.cat(outs) if outs else torch.zeros(0, dtype=torch.float64)
        lab_t = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.float64)
        return gather(out_t), gather(lab_t)

    def evaluate(self, loader: Union[EvalLoader, RankingEvaluator]) -> Dict[str, float]:
        """Global metrics over the whole split (identical on every rank); a :class:`RankingEvaluator` gives
        the split's full-ranking metrics instead."""
        if isinstance(loader, RankingEvaluator):
            return loader.evaluate(self.model, self.ctx.device)
        outputs, labels = self.predict(loader)
        return compute_metrics(self.label_kind, labels, outputs)

    def _better(self, a: float, b: Optional[float]) -> bool:
        _, higher = self.selection
        return b is None or (a > b if higher else a < b)

    def fit(
        self, train: Union[TrainLoader, NegativeSamplingLoader], val: Union[EvalLoader, RankingEvaluator]
    ) -> FitResult:
        """Trains up to ``cfg.epochs`` epochs with early stopping on validation; restores the best state.

        Starts from :attr:`fit_state`, which a hook's ``on_train_start`` may restore from a checkpoint
        (:class:`~recdim.train.resume.CheckpointHook`); training then continues at the saved step of the
        saved epoch.
        """
        name, _ = self.selection
        self.fit_state, self.epoch = FitState(), 0
        for hook in self.hooks:
            hook.on_train_start(self)
        st = self.fit_state
        result = st.result
        total = len(train) * self.cfg.epochs
        if self.cfg.max_steps:
            total = min(total, self.cfg.max_steps)
        bar = tqdm(
            total=total * train.batch_size,
            initial=min(total, self.global_step) * train.batch_size,
            unit="samples",
            unit_scale=True,
            disable=not (self.cfg.progress and self.ctx.is_main and sys.stderr.isatty()),
            dynamic_ncols=True,
        )
        stop = bool(self.cfg.max_steps and self.global_step >= self.cfg.max_steps)
        for epoch in range(self.epoch, self.cfg.epochs):
            self.epoch = epoch
            t0 = time.perf_counter()
            losses = st.epoch_losses
            steps_here = 0
            for batch in () if stop else train.epoch(epoch, st.step_in_epoch):
                losses.append(self.train_step(batch))
                st.step_in_epoch += 1
                steps_here += 1
                for hook in self.hooks:
                    hook.after_step(self, self.global_step, batch)
                bar.update(train.batch_size)
                if self.global_step % max(1, self.cfg.log_every) == 0:
                    bar.set_postfix(epoch=epoch, loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
                if self.cfg.max_steps and self.global_step >= self.cfg.max_steps:
                    stop = True
                    break
                if any(h.should_stop(self) for h in self.hooks):
                    stop = True
                    break
            result.train_time_s += time.perf_counter() - t0
            result.samples += steps_here * train.batch_size
            val_metrics = self.evaluate(val)
            for hook in self.hooks:
                hook.on_epoch_end(self, epoch, val_metrics)
            entry = {
                "epoch": epoch,
                "steps": self.global_step,
                "train_loss": sum(losses) / max(1, len(losses)),
                "val": val_metrics,
            }
            result.history.append(entry)
            if self.ctx.is_main and self.cfg.progress:
                rate = steps_here * train.batch_size / max(1e-9, time.perf_counter() - t0)
                bar.write(
                    f"epoch {epoch}: train_loss {entry['train_loss']:.4f} "
                    + " ".join(f"val_{k} {v:.4f}" for k, v in val_metrics.items())
                    + f" ({rate:,.0f} samples/s)",
                    file=sys.stderr,
                )
            st.epoch_losses, st.step_in_epoch = [], 0
            if self._better(val_metrics[name], st.best_value):
                st.best_value, result.best_epoch, result.best_val = val_metrics[name], epoch, val_metrics
                st.best_state = snapshot(self.model)
                st.stale = 0
            else:
                st.stale += 1
                if self.cfg.patience and st.stale >= self.cfg.patience:
                    break
            if stop:
                break
        bar.close()
        if st.best_state is not None:
            restore(self.model, st.best_state)
        result.steps = self.global_step
        return result
