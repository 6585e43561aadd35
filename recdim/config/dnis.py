"""Settings of the DNIS / AutoSrh soft-selection search (kept free of heavy imports for ``recdim.config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DNISConfig:
    """DNIS / AutoSrh search: feature blocks, soft-selection weights alpha and their bi-level updates.

    Args:
        num_blocks: L, frequency blocks the ids are cut into (each block shares one K-wide alpha row).
        blocking: ``global`` cuts all features' ids together into L equal-count blocks (the papers'
            setting: alpha is [L, K]); ``per_table`` cuts every table on its own (alpha is [F * L, K],
            which also gives a per-field importance).
        arch_lr: Adam learning rate of alpha.
        update_every: f, training steps between two alpha steps.
        val_batch_size: rows of the validation batch of one alpha step, at most: the batch is
            ``min(train.batch_size, val_batch_size)`` (0: ``train.batch_size``). The default caps it at 1024
            rows, which leaves runs with training batches of up to 1024 unchanged and keeps an alpha step
            at every training step within about 1.5x the plain step for larger training batches: an
            architecture pass (forward plus the backward to the provider output) costs about as much as
            a training step at the same batch size, while alpha's gradient is normalised per block row
            (only its direction counts) and averaged by Adam over steps, so 1024 validation rows give it
            a stable direction.
        warm_start_epochs: epochs of training steps only before alpha steps begin.
        l1: strength of the L1 penalty on alpha, added after the row-wise gradient normalisation (so
            it is in units of the normalised gradient, whatever the loss scale); 0 disables it.
        second_order: use the unrolled (DARTS second-order) alpha gradient with a finite-difference
            Hessian-vector product instead of the first-order one.
        single_level: take alpha's gradient from the training step's own backward (∇_α L_train on the
            training batch, first-order single-level) instead of a validation pass: no extra forward or
            backward, the same normalisation / L1 / Adam / clipping. Cheaper per alpha step, but alpha then
            fits the training batches; the default (False) is the papers' bi-level search. Not with
            ``second_order``.
        fd_epsilon: finite-difference step of the second-order gradient, divided by the norm of the
            direction (``eps = fd_epsilon / ||v||``, the DARTS convention).
        bag_path: how multi-valued features apply alpha: ``split`` (block-split pooling: an L-times wider
            pooled output) or ``sequence`` (per-id rows from an EmbeddingCollection: nnz rows; on CPU
            FBGEMM's per-id backward is slow, see ``benchmarks/search_overhead_dnis.py``).

    Example::

        DNISConfig(num_blocks=10, blocking="per_table", update_every=1)
    """

    num_blocks: int = 10
    blocking: Literal["global", "per_table"] = "global"
    arch_lr: float = 0.01
    update_every: int = 1
    val_batch_size: int = 1024
    warm_start_epochs: int = 0
    l1: float = 0.0
    second_order: bool = False
    single_level: bool = False
    fd_epsilon: float = 0.01
    bag_path: Literal["split", "sequence"] = "split"

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"dnis.num_blocks must be >= 1, got {self.num_blocks}")
        if self.blocking not in ("global", "per_table"):
            raise ValueError(f"dnis.blocking must be 'global' or 'per_table', got {self.blocking!r}")
        if self.arch_lr <= 0 or self.update_every < 1 or self.warm_start_epochs < 0:
            raise ValueError("dnis.arch_lr must be > 0, update_every >= 1 and warm_start_epochs >= 0")
        if self.val_batch_size < 0:
            raise ValueError(f"dnis.val_batch_size must be >= 0, got {self.val_batch_size}")
        if self.bag_path not in ("split", "sequence"):
            raise ValueError(f"dnis.bag_path must be 'split' or 'sequence', got {self.bag_path!r}")
        if self.single_level and self.second_order:
            raise ValueError("dnis.single_level and dnis.second_order exclude each other")
        if self.l1 < 0 or self.fd_epsilon <= 0:
            raise ValueError("dnis.l1 must be >= 0 and fd_epsilon > 0")
