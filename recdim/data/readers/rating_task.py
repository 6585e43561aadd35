"""Star ratings as the label of a task: the rating itself, or like / dislike.

Shared by the readers of rating data (MovieLens, Amazon reviews): task ``rating`` keeps the rating
(regression, :attr:`~recdim.data.schema.LabelKind.RATING`); task ``ctr`` turns rating >= 4 into 1 and
rating <= 2 into 0 and drops the ratings in between (3, and 2.5 / 3.5 in half-star data), which the
reader reports as ``label_filtered``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from recdim.data.schema import LabelKind

RatingTask = Literal["rating", "ctr"]
TASKS = ("rating", "ctr")
#: task ``ctr``: ratings at or above this are positive.
LIKED = 4.0
#: task ``ctr``: ratings at or below this are negative.
DISLIKED = 2.0


def check_task(task: str, source: str) -> None:
    """Raises ``ValueError`` unless ``task`` is ``rating`` or ``ctr`` (``source`` names the reader)."""
    if task not in TASKS:
        raise ValueError(f"{source} task must be 'rating' or 'ctr', got {task!r}")


def label_kind(task: RatingTask) -> LabelKind:
    """The label kind of ``task``: ``RATING`` for ``rating``, ``BINARY`` for ``ctr``."""
    return LabelKind.RATING if task == "rating" else LabelKind.BINARY


@dataclass
class RatingLabels:
    """Labels of one block of ratings.

    Args:
        label: float64 [M], the labels of the kept rows.
        keep: bool [N], which of the N ratings are kept (all of them for task ``rating``).
        filtered: N - M, ratings dropped by the ``ctr`` rule.
    """

    label: np.ndarray
    keep: np.ndarray
    filtered: int


def rating_labels(rating: np.ndarray, task: RatingTask) -> RatingLabels:
    """The labels of ``task`` for valid ``rating``\\ s.

    Args:
        rating: float64 [N], finite ratings.
        task: ``rating`` or ``ctr``.

    Returns:
        :class:`RatingLabels`.

    Example::

        out = rating_labels(np.array([5.0, 3.0, 1.0]), "ctr")
        out.label, out.keep, out.filtered  # [1., 0.], [True, False, True], 1
    """
    if task == "rating":
        return RatingLabels(np.asarray(rating, dtype=np.float64), np.ones(len(rating), dtype=bool), 0)
    liked = rating >= LIKED
    keep = liked | (rating <= DISLIKED)
    return RatingLabels(liked[keep].astype(np.float64), keep, int((~keep).sum()))
