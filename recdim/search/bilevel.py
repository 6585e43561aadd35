"""Alternating (DARTS-style) optimisation: training steps on Θ, architecture steps on held-out batches.

The training loop updates Θ (tables through the fused optimizer, dense parts through Adam) on training
batches; every ``update_every`` steps this hook takes one held-out batch (the ``search`` split carved from
train, :mod:`recdim.data.search_split`; never the validation split) and updates the provider's
architecture parameters (DNIS alpha, AutoDim weights) with their own Adam, with the tables frozen so the
fused optimizer never sees a validation gradient.

An architecture pass differentiates the validation loss with respect to the architecture parameters only
(``torch.autograd.grad``, every other parameter out of the graph for that pass): no weight gradient is
computed, and none reaches DDP, so the hook averages the architecture gradients over ranks itself, as
DDP averages dense gradients. A provider whose architecture parameters have been taken out of training
(:func:`exclude_from_training`, before sharding) also spares every training backward their gradient.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recdim.data.loader import TrainLoader
from recdim.modules.provider import EmbeddingProvider
from recdim.train.hooks import StepHook

GradTransform = Callable[[List[nn.Parameter]], None]


@contextlib.contextmanager
def requires_grad_scope(enabled: Sequence[nn.Parameter], disabled: Sequence[nn.Parameter] = ()) -> Iterator[None]:
    """Within this context ``enabled`` require grad and ``disabled`` do not; the flags are restored on exit.

    Args:
        enabled: parameters to differentiate.
        disabled: parameters to keep out of the graph.

    Example::

        with requires_grad_scope([alpha], dense):
            (g,) = torch.autograd.grad(loss_fn(), [alpha])
    """
    params = [*enabled, *disabled]
    before = [p.requires_grad for p in params]
    try:
        for p in enabled:
            p.requires_grad_(True)
        for p in disabled:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def exclude_from_training(provider: EmbeddingProvider) -> None:
    """Takes the provider's architecture parameters out of training steps: they stop requiring grad, so the
    training backward never computes their gradient, and DDP (built after this call) leaves them out.
    :class:`BilevelHook` turns them back on for its architecture passes and averages their gradients over
    ranks itself. Call before the model is sharded.

    Example::

        provider = SoftSelectionProvider(num, 16, plan)
        exclude_from_training(provider)
        dmp = shard_model(model_with(provider), cfg.train, ctx)
    """
    for p in provider.arch_parameters():
        p.requires_grad_(False)


def search_rows(session: Any) -> Any:
    """The session's ``search`` split, on which architecture steps learn.

    Raises:
        KeyError: naming the fix, when the session was opened without one (``open_session(...,
            search_split=method.search_split())``).
    """
    if "search" not in session.splits:
        raise KeyError(
            "this session has no search split: open it with open_session(..., search_split=method.search_split())"
        )
    return session.splits["search"]


def arch_batch_size(train_batch_size: int, cap: int, val_rows: int, world_size: int) -> int:
    """Global batch size of an architecture step's held-out batch: ``min(train_batch_size, cap)`` (``cap`` 0:
    no cap), no more than the search split holds, in whole rows per rank.

    Args:
        train_batch_size: the training batch size (``train.batch_size``).
        cap: the method's ``val_batch_size`` (0 for none).
        val_rows: rows of the search split.
        world_size: data-parallel ranks.

    Raises:
        ValueError: when the split cannot give every rank one row.

    Example::

        arch_batch_size(4096, 1024, 40_000, 2)   # 1024
    """
    batch = min(train_batch_size, cap) if cap > 0 else train_batch_size
    batch = min(batch, val_rows) // world_size * world_size
    if batch < world_size or batch < 1:
        raise ValueError(
            f"the search split has {val_rows} rows: too few for architecture steps (raise search.split.fraction)"
        )
    return batch


def average_over_ranks(params: Sequence[nn.Parameter]) -> None:
    """Replaces every ``p.grad`` by its mean over the default process group (one all-reduce; a no-op on one
    rank). A parameter without a gradient joins as zeros, so every rank steps the same parameters."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for p, g in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = g.view_as(p)


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
    """Takes first-order architecture steps on held-out (search-split) batches.

    Args:
        provider: the provider whose :meth:`~EmbeddingProvider.arch_parameters` are searched.
        val_batches: a loader over the search split (cycled, reshuffled every pass); None for a
            subclass that takes its gradients from the training step.
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
        val_batches: Optional[TrainLoader],
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
        # foreach only pays off for several tensors (the single-tensor loop takes the same steps, bitwise).
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.arch_lr, foreach=len(self.params) > 1)
        # Materialise Adam's moments (zeros, step 0: the same first step as a fresh Adam) so that the
        # checkpoint template always has them and a resumed run reads the saved moments back.
        for p in self.params:
            self.optimizer.state[p] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
        self._pass = 0
        self._drawn = 0  # batches drawn from the current validation pass
        self._iter: Iterator[Batch] = iter(())
        self.arch_steps = 0
        self._frozen: Optional[List[nn.Parameter]] = None

    def next_val_batch(self) -> Batch:
        assert self.val_batches is not None, "this hook takes no held-out batches"
        try:
            batch = next(self._iter)
        except StopIteration:
            self._iter = self.val_batches.epoch(self._pass)
            self._pass += 1
            self._drawn = 0
            batch = next(self._iter)
        self._drawn += 1
        return batch

    def other_parameters(self, model: nn.Module) -> List[nn.Parameter]:
        """``model``'s parameters that require grad, outside the fused optimizer and the architecture
        parameters (found once): what an architecture pass keeps out of the graph."""
        if self._frozen is None:
            arch = {id(p) for p in self.params}
            named = in_backward_optimizer_filter(model.named_parameters(), include=False)
            self._frozen = [p for _, p in named if p.requires_grad and id(p) not in arch]
        return self._frozen

    def arch_gradient(self, trainer: Any, batch: Batch) -> None:
        """Sets ``p.grad`` of the architecture parameters to ∇_arch L_val on this rank's part of ``batch``
        (first order). Only that gradient is computed: the tables are frozen and the other parameters are
        out of the graph for this pass."""
        with requires_grad_scope(self.params, self.other_parameters(trainer.model)), self.provider.frozen_tables():
            loss = trainer.loss(batch)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        for p, g in zip(self.params, grads):
            p.grad = g

    def due(self, trainer: Any, step: int) -> bool:
        """Whether ``step`` takes an architecture step (past the warm start, every ``update_every`` steps)."""
        return trainer.epoch >= self.cfg.warm_start_epochs and step % self.cfg.update_every == 0

    def arch_step(self) -> None:
        """One step from the gradients in ``p.grad``: transform, Adam, then ``after_arch_step``."""
        if self.grad_transform is not None:
            self.grad_transform(self.params)
        self.optimizer.step()
        self.arch_steps += 1
        if self.after_arch_step is not None:
            with torch.no_grad():
                self.after_arch_step()

    def after_step(self, trainer: Any, step: int, batch: Batch) -> None:
        if not self.due(trainer, step):
            return
        self.optimizer.zero_grad()
        if not trainer.model.training:  # the training step just set train mode (a no-op walk over modules)
            trainer.model.train()
        self.arch_gradient(trainer, self.next_val_batch())
        average_over_ranks(self.params)
        self.arch_step()
        self.optimizer.zero_grad()  # no validation gradient left for the training steps

    def state(self) -> Dict[str, Any]:
        return {"arch_steps": self.arch_steps, "arch_split": "search"}

    def state_dict(self) -> Dict[str, Any]:
        """Architecture optimizer state and counters, saved in checkpoints (the parameters themselves
        live in the model)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "arch_steps": self.arch_steps,
            "val_pass": self._pass,
            "val_drawn": self._drawn,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.arch_steps = int(state["arch_steps"])
        self._pass = int(state["val_pass"])
        self._drawn = int(state.get("val_drawn", 0))
        # Continue the validation pass where it was (batches are a pure function of seed, pass, step).
        in_pass = self._pass > 0 and self.val_batches is not None
        self._iter = self.val_batches.epoch(self._pass - 1, self._drawn) if in_pass else iter(())
