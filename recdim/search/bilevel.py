"""Alternating (DARTS-style) optimisation: training steps on Θ, architecture steps on validation batches.

The training loop updates Θ (tables through the fused optimizer, dense parts through Adam) on training
batches; every ``update_every`` steps this hook takes one validation batch and updates the provider's
architecture parameters (DNIS alpha, AutoDim weights) with their own Adam, with the tables frozen so the
fused optimizer never sees a validation gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import nn
from torchrec.datasets.utils import Batch

from recdim.data.loader import TrainLoader
from recdim.modules.provider import EmbeddingProvider
from recdim.train.hooks import StepHook

GradTransform = Callable[[List[nn.Parameter]], None]


@dataclass(frozen=True)
class BilevelConfig:
    """Architecture-step settings.

    Args:
        arch_lr: Adam learning rate of the architecture parameters.
        update_every: f, training steps between architecture steps.
        warm_start_epochs: epochs of training steps only before architecture steps begin.
    """

    arch_lr: float = 0.01
    update_every: int = 1
    warm_start_epochs: int = 0


class BilevelHook(StepHook):
    """Takes first-order architecture steps on validation batches.

    Args:
        provider: the provider whose :meth:`~EmbeddingProvider.arch_parameters` are searched.
        val_batches: a loader over the validation split (cycled, reshuffled every pass).
        cfg: learning rate, frequency, warm start.
        grad_transform: rewrites the architecture gradients in place before the step (e.g. DNIS's
            row-wise normalisation and L1).
        after_arch_step: called after each architecture step (e.g. clipping alpha to [0, 1]).

    Example::

        hook = BilevelHook(provider, TrainLoader(val, names, 512), BilevelConfig(update_every=10))
        session.trainer.hooks.append(hook)
    """

    def __init__(
        self,
        provider: EmbeddingProvider,
        val_batches: TrainLoader,
        cfg: BilevelConfig,
        grad_transform: Optional[GradTransform] = None,
        after_arch_step: Optional[Callable[[], None]] = None,
    ) -> None:
        self.provider = provider
        self.params = provider.arch_parameters()
        if not self.params:
            raise ValueError(f"{type(provider).__name__} has no architecture parameters to search")
        self.val_batches = val_batches
        self.cfg = cfg
        self.grad_transform = grad_transform
        self.after_arch_step = after_arch_step
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.arch_lr)
        # Materialise Adam's moments (zeros, step 0: the same first step as a fresh Adam) so that the
        # checkpoint template always has them and a resumed run reads the saved moments back.
        for p in self.params:
            self.optimizer.state[p] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
        self._pass = 0
        self._iter: Iterator[Batch] = iter(())
        self.arch_steps = 0

    def next_val_batch(self) -> Batch:
        try:
            return next(self._iter)
        except StopIteration:
            self._iter = self.val_batches.epoch(self._pass)
            self._pass += 1
            return next(self._iter)

    def arch_gradient(self, trainer: Any, batch: Batch) -> None:
        """Fills ``p.grad`` of the architecture parameters with ∇_arch L_val (first order)."""
        with self.provider.frozen_tables():
            loss = trainer.loss(batch)
        loss.backward()

    def after_step(self, trainer: Any, step: int, batch: Batch) -> None:
        if trainer.epoch < self.cfg.warm_start_epochs or step % self.cfg.update_every:
            return
        trainer.optimizer.zero_grad()
        self.optimizer.zero_grad()
        trainer.model.train()
        self.arch_gradient(trainer, self.next_val_batch())
        if self.grad_transform is not None:
            self.grad_transform(self.params)
        self.optimizer.step()
        trainer.optimizer.zero_grad()
        self.arch_steps += 1
        if self.after_arch_step is not None:
            with torch.no_grad():
                self.after_arch_step()

    def state(self) -> Dict[str, Any]:
        return {"arch_steps": self.arch_steps}

    def state_dict(self) -> Dict[str, Any]:
        """Architecture optimizer state and counters, saved in checkpoints (the parameters themselves
        live in the model)."""
        return {"optimizer": self.optimizer.state_dict(), "arch_steps": self.arch_steps, "val_pass": self._pass}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.arch_steps = int(state["arch_steps"])
        self._pass = int(state["val_pass"])
        self._iter = iter(())
