"""Settings of the AutoDim search (candidate dimensions); imports nothing heavy so configs can use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Tuple


@dataclass(frozen=True)
class AutoDimConfig:
    """AutoDim: every feature mixes a few candidate dimensions; weights on validation pick one.

    The paper's ablations are settings here: weight sharing (``storage``), linear transform or zero padding
    (``transform``), no temperature annealing (``tau_decay = 0``: tau stays ``tau_start``), first- or
    second-order architecture gradients (``second_order``); AutoDim-s, the soft mixture scored without
    selection and retraining, is the method ``autodim_s``.

    Args:
        candidates: candidate dimensions, multiples of 4; those above K are dropped.
        storage: ``shared`` (prefix slices of one table of the largest candidate, weight sharing) or
            ``separate`` (one table per candidate).
        transform: how a candidate reaches width K: ``linear_bn`` (Linear + BatchNorm1d without affine)
            or ``zero_pad``.
        arch_lr: Adam learning rate of the architecture weights.
        update_every: f, training steps between architecture steps on a validation batch.
        val_batch_size: rows of that validation batch, at most: ``min(train.batch_size, val_batch_size)``
            (0: ``train.batch_size``). The default caps it at 1024 rows, which leaves runs with training
            batches of up to 1024 unchanged; an architecture pass costs about as much as a training step
            at the same batch size, and J weights per feature need no larger batch for a stable
            gradient (their Adam averages it over steps).
        pretrain_steps: training steps with fixed equal weights (no Gumbel noise, no architecture steps)
            before the search.
        pretrain_epochs: epochs of that pre-training (both limits must be passed).
        tau_start: Gumbel-softmax temperature when the search starts.
        tau_decay: decrease of the temperature per search step.
        tau_min: lowest temperature; tau = max(tau_min, tau_start - tau_decay * search step).
        second_order: take the unrolled (DARTS second-order) architecture gradient, with a one-step look-ahead
            of the transforms and the arch at ``train.lr`` and a finite-difference Hessian-vector product
            (four passes per architecture step instead of one), instead of the first-order one.
        fd_epsilon: finite-difference step of the second-order gradient, divided by the norm of the
            direction (``eps = fd_epsilon / ||v||``).

    Example::

        cfg = AutoDimConfig(candidates=(4, 8, 16), update_every=10, pretrain_steps=1000)
        no_annealing = AutoDimConfig(tau_decay=0.0)
    """

    candidates: Tuple[int, ...] = (4, 8, 16, 24, 32)
    storage: Literal["shared", "separate"] = "shared"
    transform: Literal["linear_bn", "zero_pad"] = "linear_bn"
    arch_lr: float = 0.01
    update_every: int = 10
    val_batch_size: int = 1024
    pretrain_steps: int = 0
    pretrain_epochs: int = 0
    tau_start: float = 1.0
    tau_decay: float = 5e-5
    tau_min: float = 0.01
    second_order: bool = False
    fd_epsilon: float = 0.01

    def __post_init__(self) -> None:
        if not self.candidates or any(d <= 0 or d % 4 for d in self.candidates):
            raise ValueError(f"autodim.candidates must be positive multiples of 4, got {self.candidates}")
        if self.update_every < 1:
            raise ValueError(f"autodim.update_every must be >= 1, got {self.update_every}")
        if self.val_batch_size < 0:
            raise ValueError(f"autodim.val_batch_size must be >= 0, got {self.val_batch_size}")
        if self.pretrain_steps < 0 or self.pretrain_epochs < 0:
            raise ValueError("autodim.pretrain_steps and pretrain_epochs must be >= 0")
        if not 0 < self.tau_min <= self.tau_start or self.tau_decay < 0:
            raise ValueError("autodim temperatures need 0 < tau_min <= tau_start and tau_decay >= 0")
        if self.fd_epsilon <= 0:
            raise ValueError(f"autodim.fd_epsilon must be > 0, got {self.fd_epsilon}")
