"""Quotient-remainder (QR) embeddings as a baseline (Shi et al., "Compositional Embeddings Using
Complementary Partitions for Memory-Efficient Recommendation Systems", KDD 2020): id i of feature f is
``W_q[i // m_f] * W_r[i mod m_f]`` (:func:`~recdim.layout.shared_rows.qr_plan` picks m_f for the budget,
:mod:`recdim.modules.hashed_embedding` looks the rows up)."""

from __future__ import annotations

from typing import Mapping

from recdim.layout.shared_rows import SharingPlan, qr_plan
from recdim.modules.hashed_embedding import QRCombine
from recdim.search.baselines.shared_rows import SharedRowsMethod


class QRMethod(SharedRowsMethod):
    """``qr``: quotient and remainder tables per feature, combined by :attr:`combine` (the paper's best,
    the elementwise product; a subclass with ``combine = QRCombine.ADD`` gives the sum), trained from scratch.

    Example::

        QRMethod(cfg).plan({"user": 944, "item": 1683}, 4.0).cr     # 4.0107
    """

    name = "qr"
    combine = QRCombine.MULT

    def plan(self, num_embeddings: Mapping[str, int], cr: float) -> SharingPlan:
        return qr_plan(num_embeddings, self.cfg.model.embedding_dim, cr)
