"""What retraining may change: everything, or everything but the tables (+FE), or but the arch (+IF)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Tuple

RETRAIN_MODES = ("all", "frozen_embeddings", "frozen_interaction")


@contextlib.contextmanager
def retrain_scope(session: Any, mode: str) -> Iterator[None]:
    """Trains ``session`` inside this context with part of the model frozen (AutoSrh's ablations).

    - ``all``: nothing frozen.
    - ``frozen_embeddings`` (+FE): the tier tables keep their starting values; the provider's lookups are cut
      from autograd (:meth:`~recdim.modules.provider.EmbeddingProvider.frozen_tables`), so the fused table
      optimizer receives no gradient.
    - ``frozen_interaction`` (+IF): the interaction arch keeps its starting parameters; the dense optimizer's
      learning rate is 0 for the whole run (gradients still flow through the arch into the tables, and
      data-parallel reduction is unchanged).

    Args:
        session: a :class:`~recdim.train.run.Session` (its optimizer already built).
        mode: one of :data:`RETRAIN_MODES`.

    Example::

        with retrain_scope(session, "frozen_embeddings"):
            results = train_and_evaluate(session, None)
    """
    if mode not in RETRAIN_MODES:
        raise ValueError(f"prune.retrain must be one of {RETRAIN_MODES}, got {mode!r}")
    if mode == "frozen_embeddings":
        with session.model.provider.frozen_tables():
            yield
        return
    if mode == "frozen_interaction":
        saved: List[Tuple[dict, float]] = []
        for name, opt in session.trainer.optimizer.optimizers:
            if name != "dense":  # "fused" / "tables": the table optimizers
                continue
            for group in opt.param_groups:
                saved.append((group, group["lr"]))
                group["lr"] = 0.0
        try:
            yield
        finally:
            for group, lr in saved:
                group["lr"] = lr
        return
    yield
