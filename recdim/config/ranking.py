"""Settings of the top-k recommendation task (``train.task = "topk"``): full ranking over all items."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Tuple

RANKING_METRICS = ("recall", "mrr", "ndcg")


@dataclass(frozen=True)
class RankingConfig:
    """Top-k recommendation: how training draws negatives and how validation / test rank every item.

    Evaluation scores every candidate item (every item id with a training row, the OOV id excluded) for
    every user with a held-out positive, masks the user's training items (and validation items when
    scoring test), and reports Recall / MRR / NDCG at each k, averaged over users.

    Args:
        ks: cut-offs k of the reported metrics.
        select: the validation metric that selects the epoch and drives early stopping, ``<name>@<k>``
            with name in ``recall``, ``mrr``, ``ndcg`` and k in ``ks``.
        negatives: items drawn per positive training row, uniformly among the candidates the user has no
            positive training row with, labelled 0 and redrawn every epoch (the training loss only;
            evaluation always ranks every item). 0 trains on the labelled rows alone.
        user_field: the feature holding the user id.
        item_field: the feature holding the item id.

    Example::

        RankingConfig(ks=(1, 5, 10), select="ndcg@10", negatives=4)
    """

    ks: Tuple[int, ...] = (1, 5, 10)
    select: str = "ndcg@10"
    negatives: int = 4
    user_field: str = "user_id"
    item_field: str = "item_id"

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ranking.ks must be positive cut-offs, got {self.ks}")
        m = re.fullmatch(r"([a-z]+)@(\d+)", self.select)
        if m is None or m.group(1) not in RANKING_METRICS or int(m.group(2)) not in self.ks:
            names = ", ".join(f"{n}@{k}" for n in RANKING_METRICS for k in self.ks)
            raise ValueError(f"ranking.select must be one of {names}; got {self.select!r}")
        if self.negatives < 0:
            raise ValueError(f"ranking.negatives must be >= 0, got {self.negatives}")
        if self.user_field == self.item_field:
            raise ValueError(f"ranking.user_field and ranking.item_field are both {self.user_field!r}")
