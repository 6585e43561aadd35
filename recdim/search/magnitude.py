"""Magnitude pruning of the trained uniform table (the "network pruning" comparison of DNIS, Fig. 3c).

The "search" trains the plain K-wide model; pruning keeps the entries with the largest ``|w|`` over all
tables at each budget (exactly the kept count the budget allows, as DNIS's pruning of ``e ⊙ alpha``), and
retraining fine-tunes the kept entries from their trained values and the trained arch (``prune.init =
"fresh"`` starts over instead). One trained model serves every budget.
"""

from __future__ import annotations

from typing import List, Sequence

from recdim.config import PruneConfig
from recdim.data.prepared import PreparedDataset
from recdim.layout.pruned import PrunedModel, magnitude_pruned
from recdim.modules.uniform import table_name
from recdim.search.field_importance import field_allocation, search_split_field_importance
from recdim.search.importance import search_split_scores
from recdim.search.method import SearchedModel, SearchMethod
from recdim.train.build import ProviderFactory, uniform_provider


class MagnitudeMethod(SearchMethod):
    """Trains the uniform table, prunes it by ``|w|``.

    Args:
        cfg: the experiment config (the model's own ``model`` and ``train`` sections; no search section).

    Example::

        results = run_search(cfg, Path("runs/magnitude"), method="magnitude")
        pruned = derive(cfg, Path("runs/magnitude"))     # one PrunedModel per prune.crs
    """

    name = "magnitude"
    budget_free = True

    def provider_factory(self, dataset: PreparedDataset, features: Sequence[str]) -> ProviderFactory:
        return uniform_provider

    def derive(self, searched: SearchedModel, prune: PruneConfig) -> List[PrunedModel]:
        tables = {f: searched.tables[table_name(f)] for f in searched.features}
        scores = search_split_scores(searched, tables) if prune.score == "fisher" else tables
        importance = (
            search_split_field_importance(searched, tables, prune.field_confidence)
            if field_allocation(prune, "global")
            else None
        )
        rule = "trained uniform values"
        return magnitude_pruned(self.name, scores, prune, tables, searched.arch_state, rule, importance)
