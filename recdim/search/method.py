"""The shape every search method takes: a provider, hooks on the training loop, and its artifacts."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Dict, List, Sequence

from recdim.config import Config
from recdim.data.prepared import PreparedDataset
from recdim.train.build import ProviderFactory
from recdim.train.hooks import StepHook


class SearchMethod(abc.ABC):
    """A dimension-search method (DNIS / AutoSrh, PEP, AutoDim, baselines).

    ``recdim search`` builds the method's provider through :meth:`provider_factory`, shards it with
    DistributedModelParallel, trains with the method's :meth:`hooks`, then calls :meth:`save` on every
    rank (rank 0 writes files; collective gathers may run on all ranks).

    Args:
        cfg: the whole experiment config (the method reads its own section of ``cfg.search``).
    """

    name: str = ""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    @abc.abstractmethod
    def provider_factory(self, dataset: PreparedDataset, features: Sequence[str]) -> ProviderFactory:
        """Builds the provider for ``features`` (may read ``dataset.counts`` for frequencies)."""

    def hooks(self, session: Any) -> List[StepHook]:
        """Step hooks for the training loop (architecture steps, schedules, snapshots)."""
        return []

    def save(self, session: Any, out_dir: Path) -> Dict[str, Any]:
        """Writes the learned search state (alpha, thresholds, weights) into ``out_dir``; returns a
        JSON-ready summary for ``results.json``."""
        return {}
