"""Step hooks: how search methods add work to the training loop without forking it."""

from __future__ import annotations

from typing import Any, Dict

from torchrec.datasets.utils import Batch


class StepHook:
    """Called by :class:`~recdim.train.trainer.Trainer` around training.

    A search method (for example the DNIS architecture step on a validation batch every f steps)
    subclasses this and overrides what it needs; all methods default to doing nothing.
    """

    def on_train_start(self, trainer: Any) -> None:
        pass

    def after_step(self, trainer: Any, step: int, batch: Batch) -> None:
        pass

    def on_epoch_end(self, trainer: Any, epoch: int, val_metrics: Dict[str, float]) -> None:
        pass

    def should_stop(self, trainer: Any) -> bool:
        return False

    def state(self) -> Dict[str, Any]:
        """JSON-ready summary written into ``results.json`` under ``search``."""
        return {}
