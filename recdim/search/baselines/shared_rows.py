"""Row-sharing baselines (hashing, QR) as methods: they give a row-sharing plan that trains its own
embedding (:func:`recdim.retrain.shared_rows.run_shared_rows`, called by the pipeline) instead of
assigning dimensions."""

from __future__ import annotations

import abc
from typing import Mapping, Optional

import numpy as np

from recdim.layout.dims import DimAssignment
from recdim.layout.shared_rows import SharingPlan
from recdim.modules.hashed_embedding import QRCombine
from recdim.search.method import BaselineMethod


class SharedRowsMethod(BaselineMethod):
    """A baseline whose every id keeps K dimensions, read from fewer rows than ids.

    Subclasses give :meth:`plan`; :func:`recdim.pipeline.run_experiment` trains the plan of
    :meth:`sharing_plan` from a fresh initialisation (:func:`recdim.retrain.shared_rows.run_shared_rows`).

    Args:
        cfg: the whole experiment config (``model.embedding_dim`` is read).

    Example::

        m = create("qr", cfg)
        plan = m.sharing_plan({"user_id": 943, "item_id": 1682}, 4.0)   # K-wide rows at a quarter of the bytes
    """

    combine: QRCombine = QRCombine.MULT
    """How QR rows combine (hashing has none to combine)."""

    @abc.abstractmethod
    def plan(self, num_embeddings: Mapping[str, int], cr: float) -> SharingPlan:
        """The row layouts of ``{feature: N}`` at compression rate ``cr``."""

    def sharing_plan(self, num_embeddings: Mapping[str, int], cr: float, arg: Optional[int] = None) -> SharingPlan:
        """:meth:`plan`, after checking that the method name carried no ``@`` argument.

        Raises:
            ValueError: naming the argument (QR and hashing take none).
        """
        if arg is not None:
            raise ValueError(f"{self.name} takes no '@' argument, got {arg}")
        return self.plan(num_embeddings, cr)

    def assign(self, counts: Mapping[str, np.ndarray], cr: float, arg: Optional[int] = None) -> DimAssignment:
        raise ValueError(
            f"{self.name} shares rows between ids at full width K; it assigns no dimensions "
            "(run it through run_experiment, which trains its sharing_plan)"
        )
