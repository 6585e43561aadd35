"""The shape every method takes: a search (provider, hooks, artifacts, pruned models) or a baseline
(dimensions at a budget).

Methods are registered by name in :mod:`recdim.config.methods`; :func:`create` builds one from there.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from recdim.config import Config, PruneConfig
from recdim.config.methods import MethodKind, parse
from recdim.config.search_split import SearchSplitConfig
from recdim.data.prepared import PreparedDataset
from recdim.layout.dims import DimAssignment
from recdim.layout.pruned import PrunedModel
from recdim.train.build import ProviderFactory
from recdim.train.hooks import StepHook


class Method(abc.ABC):
    """What every registered method answers.

    Args:
        cfg: the whole experiment config (the method reads its own section of ``cfg.search``).
    """

    name: str = ""
    kind: MethodKind = "search"
    budget_free: bool = False
    """True when one run serves every budget (the budget is applied afterwards, by pruning)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def at_budget(self, cr: float) -> Config:
        """The config this method runs with to meet compression rate ``cr`` (default: unchanged)."""
        return self.cfg


@dataclass
class SearchedModel:
    """A trained search run, rebuilt in one process, as pruning reads it.

    Args:
        search_dir: the ``recdim search`` run directory.
        cfg: the config the search ran with.
        dataset: its prepared dataset.
        features: provider feature order.
        provider: the searching provider, holding the trained search state.
        tables: ``{table name: [N, width]}`` full trained tables.
        arch_state: the trained arch's state dict (detached copies).
        arch: the trained arch module itself (what a held-out importance score runs; None when not rebuilt).
    """

    search_dir: Path
    cfg: Config
    dataset: PreparedDataset
    features: List[str]
    provider: Any
    tables: Dict[str, torch.Tensor]
    arch_state: Dict[str, torch.Tensor]
    arch: Optional[Any] = None


class SearchMethod(Method):
    """A dimension-search method (DNIS / AutoSrh, PEP, AutoDim).

    ``recdim search`` builds the method's provider through :meth:`provider_factory`, shards it with
    DistributedModelParallel, trains with the method's :meth:`hooks`, then calls :meth:`save` on every
    rank (rank 0 writes files; collective gathers may run on all ranks). ``recdim prune`` rebuilds the
    trained model and calls :meth:`derive`.

    Args:
        cfg: the whole experiment config (the method reads its own section of ``cfg.search``).
    """

    kind: MethodKind = "search"

    @abc.abstractmethod
    def provider_factory(self, dataset: PreparedDataset, features: Sequence[str]) -> ProviderFactory:
        """Builds the provider for ``features`` (may read ``dataset.counts`` for frequencies)."""

    def search_split(self) -> Optional[SearchSplitConfig]:
        """The split carved from train on which the method's architecture steps learn, or ``None`` when it
        takes none (its hooks then read only training batches). Never the validation split, which selects
        models."""
        return None

    def hooks(self, session: Any) -> List[StepHook]:
        """Step hooks for the training loop (architecture steps, schedules, snapshots). Architecture steps
        read ``session.splits["search"]``, present when :meth:`search_split` is not ``None``."""
        return []

    def save(self, session: Any, out_dir: Path) -> Dict[str, Any]:
        """Writes the learned search state (alpha, thresholds, weights) into ``out_dir``; returns a
        JSON-ready summary for ``results.json``."""
        return {}

    @abc.abstractmethod
    def derive(self, searched: SearchedModel, prune: PruneConfig) -> List[PrunedModel]:
        """Pruned models from a trained search: one per budget of ``prune`` the method can meet.

        Raises:
            ValueError: naming a budget the search result cannot produce.
        """


class BaselineMethod(Method):
    """A baseline: dimensions assigned at a budget, retrained from a fresh initialisation.

    Args:
        cfg: the whole experiment config (baselines read ``cfg.search.baseline``).
    """

    kind: MethodKind = "baseline"

    def candidates(self, num_embeddings: Mapping[str, int], cr: float) -> List[str]:
        """The runs behind this method at ``cr``: itself, or (a search over runs, like grid) the run names
        trained one by one and chosen between on validation."""
        return [self.name]

    @abc.abstractmethod
    def assign(self, counts: Mapping[str, np.ndarray], cr: float, arg: Optional[int] = None) -> DimAssignment:
        """Per-row dimensions meeting ``cr``.

        Args:
            counts: ``{feature: [N] train counts}`` in provider order.
            cr: compression rate (uniform parameters / kept parameters).
            arg: the ``name@<arg>`` argument, when the method takes one.
        """


def create(name: str, cfg: Config, kind: Optional[MethodKind] = None) -> Method:
    """The method registered as ``name`` (``@`` arguments allowed), built for ``cfg``.

    Example::

        m = create("pep", cfg, kind="search")
        cfg_at_4 = m.at_budget(4.0)
    """
    entry, _ = parse(name, "method")
    if kind is not None and entry.kind != kind:
        from recdim.config.methods import names

        raise ValueError(f"method {name!r} is a {entry.kind}, not one of {list(names(kind))}")
    return entry.load()(cfg)


def with_search(cfg: Config, **changes: Any) -> Config:
    """``cfg`` with fields of ``cfg.search`` replaced."""
    return dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, **changes))
