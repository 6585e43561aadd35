"""Settings of the search split carved from train (kept free of heavy imports for ``recdim.config``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SearchSplitConfig:
    """The ``search`` split: train rows held out for a search's architecture steps.

    DNIS / AutoSrh's alpha and AutoDim's architecture weights learn on held-out batches. They come from
    this split, never from the validation split that selects the epoch and the model; the tables train on
    the remaining train rows (:mod:`recdim.data.search_split`). PEP and single-level DNIS take no held-out
    steps and train on the whole train split.

    Args:
        fraction: share of the train rows that go to the search split, in (0, 1).
        seed: seed of the carve; a row's membership is a pure function of (seed, its position in train).

    Example::

        [search.split]
        fraction = 0.1
        seed = 0
    """

    fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"search.split.fraction must be in (0, 1), got {self.fraction}")
