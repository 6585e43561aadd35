"""The hashing trick as a baseline: id i of feature f reads row ``i mod m_f`` of an ``[m_f, K]`` table,
``m_f`` about ``N_f / cr`` (:func:`~recdim.layout.shared_rows.hash_plan`)."""

from __future__ import annotations

from typing import Mapping

from recdim.layout.shared_rows import SharingPlan, hash_plan
from recdim.search.baselines.shared_rows import SharedRowsMethod


class HashingMethod(SharedRowsMethod):
    """``hash``: every feature hashed to ``ceil(N_f / cr)`` rows (trimmed to the budget), trained from scratch.

    Example::

        HashingMethod(cfg).plan({"user": 944, "item": 1683}, 4.0).cr     # 4.0046
    """

    name = "hash"

    def plan(self, num_embeddings: Mapping[str, int], cr: float) -> SharingPlan:
        return hash_plan(num_embeddings, self.cfg.model.embedding_dim, cr)
