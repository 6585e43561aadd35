"""Settings of ``recdim compare`` (kept free of heavy imports so that ``recdim.config`` can use it)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Sequence, Tuple

from recdim.config.arches import check_arches
from recdim.config.methods import names, parse

SEARCH_METHODS = names("search")
BASELINE_METHODS = names("baseline")
METHODS = names()
HIGHER_IS_BETTER = ("auc", "accuracy")
LOWER_IS_BETTER = ("logloss", "mse", "rmse", "mae", "loss")
# Keys that name a cell (its arch, its seed), its data, or what a budget means: never tuned.
FIXED_KEYS: Tuple[str, ...] = ("model.arch", "model.embedding_dim", "train.seed", "prepare", "data")


VARIANT_SEP = "+"


def variant_base(label: str) -> str:
    """The registry method a compare method label runs: ``"pep+inherit" -> "pep"``, ``"ue@8" -> "ue@8"``."""
    return label.partition(VARIANT_SEP)[0]


def check_variants(methods: Sequence[str], variants: Mapping[str, Sequence[str]]) -> None:
    """Raises ``ValueError`` naming ``compare.variants`` or ``compare.methods`` for a variant that cannot run:
    each label is ``<method>+<tag>`` of a registry method with ``KEY=VALUE`` overrides, and every label in
    ``methods`` with a ``+`` has an entry.

    Example::

        check_variants(["pep", "pep+inherit"], {"pep+inherit": ["prune.init=inherit"]})   # fine
    """
    for label, sets in variants.items():
        base, _, tag = label.partition(VARIANT_SEP)
        if not tag:
            raise ValueError(f"compare.variants: {label!r} must read <method>{VARIANT_SEP}<tag>, e.g. 'pep+inherit'")
        parse(base, f"compare.variants.{label}")
        if isinstance(sets, (str, bytes)) or not sets:
            raise ValueError(f"compare.variants.{label}: expected a non-empty list of KEY=VALUE overrides")
        for text in sets:
            if "=" not in text:
                raise ValueError(f"compare.variants.{label}: override {text!r}: expected KEY=VALUE")
    for m in methods:
        if VARIANT_SEP in m and m not in variants:
            raise ValueError(f"compare.methods: {m!r} names a variant that compare.variants does not define")


def check_tune(tune: Mapping[str, Sequence[Any]], where: str = "compare.tune") -> None:
    """Raises ``ValueError`` naming ``where`` and the key for a grid that cannot be run.

    Each key must be a dotted config key (``train.embedding_lr``) that does not fix the cell
    (:data:`FIXED_KEYS`), with a non-empty list of distinct scalar values.

    Example::

        check_tune({"train.embedding_lr": [0.03, 0.1]})   # fine
        check_tune({"train.seed": [0, 1]})                 # ValueError: compare.tune: train.seed ...
    """
    for key, values in tune.items():
        if "." not in key:
            raise ValueError(f"{where}: {key!r} is not a dotted config key such as 'train.embedding_lr'")
        if any(key == f or key.startswith(f + ".") for f in FIXED_KEYS):
            raise ValueError(f"{where}: {key} names the cell or changes the budget's meaning; it cannot be tuned")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"{where}.{key}: expected a non-empty list of values, got {values!r}")
        if any(isinstance(v, (list, dict, tuple)) for v in values):
            raise ValueError(f"{where}.{key}: values must be scalars, got {list(values)}")
        if len({json.dumps(v) for v in values}) != len(values):
            raise ValueError(f"{where}.{key} has duplicates: {list(values)}")


@dataclass(frozen=True)
class CompareConfig:
    """A grid of experiments: every method x arch x budget x seed is one cell, one ``run_experiment``.

    Args:
        methods: names from the method registry (:mod:`recdim.config.methods`): search methods (``dnis``,
            ``autosrh``, ``pep``, ``autodim``) and baselines (``ue``, ``grid``, ``random``, ``mde``; single
            runs ``ue@<d>`` and ``random@<i>`` too). ``grid`` and
            ``random`` train every candidate and report the one best on validation.
        arches: interaction arches (:data:`~recdim.config.arches.ARCHES`); empty means ``model.arch``.
        budgets: compression rates (uniform parameters / kept parameters), each >= 1.
        seeds: training seeds (``train.seed``); metrics are reported as mean ± std over them.
        output: directory of the cells (``runs/<cell>/``) and the report (``compare.md``, ``compare.json``,
            ``compare.png``); ``--out`` overrides it.
        epochs: ``train.epochs`` of every run (0 keeps the config's).
        overrides: ``key=value`` overrides applied to every cell's config (as ``--set``), e.g.
            ``"train.max_steps=200"``.
        arch_overrides: per arch, overrides applied after ``overrides``, e.g.
            ``{"dlrm": ["model.bottom_mlp=[16]"]}``.
        variants: methods run with their own overrides, applied last, under labels ``<method>+<tag>``
            that ``methods`` lists beside the plain method, e.g. ``{"pep+inherit": ["prune.init=inherit"]}``
            (each variant is its own row of the report and its own run directories).
        select_metric: validation metric that picks grid / random candidates; empty means ``auc`` for
            binary labels and ``mse`` for ratings. ``auc`` / ``accuracy`` are maximised, losses minimised.
        stop_on_error: raise at the first failing cell instead of recording it and going on.
        tune: fair tuning (:mod:`recdim.compare.tune`): ``{config key: values}``, e.g.
            ``{"train.embedding_lr" = [0.03, 0.1], "train.embedding_l2" = [0.0, 1e-6]}``. Every cell of
            every method runs each combination (search, pruning and retraining alike) and reports the one
            best on validation, recording the chosen values; empty: no tuning.
        search_arch: transferability: the arch every search method searches with (with that arch's
            ``arch_overrides``); each cell then retrains the dimensions found on its own arch, from a fresh
            initialisation of that arch (the searched arch's weights do not fit it). Empty: each cell
            searches with its own arch. A budget-free search is shared by every cell of the same
            (search arch, method, seed). Baselines ignore it.

    Example::

        [compare]
        methods = ["ue", "mde", "dnis"]
        arches = ["deepfm", "dlrm"]
        budgets = [2.0, 4.0]
        seeds = [0, 1, 2]
        # transferability: search on FM, retrain on each arch
        # arches = ["fm", "nfm", "pnn"]
        # search_arch = "fm"
    """

    methods: Tuple[str, ...] = ("ue", "mde")
    arches: Tuple[str, ...] = ()
    budgets: Tuple[float, ...] = (2.0, 4.0)
    seeds: Tuple[int, ...] = (0,)
    output: str = "runs/compare"
    epochs: int = 0
    overrides: Tuple[str, ...] = ()
    arch_overrides: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    variants: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    select_metric: str = ""
    stop_on_error: bool = False
    search_arch: str = ""
    tune: Dict[str, Tuple[Any, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.methods or not self.budgets or not self.seeds:
            raise ValueError("compare.methods, compare.budgets and compare.seeds must not be empty")
        for m in self.methods:
            parse(variant_base(m), "compare.methods")
        check_variants(self.methods, self.variants)
        check_arches(self.arches, "compare.arches")
        check_arches(self.arch_overrides, "compare.arch_overrides")
        if self.search_arch:
            check_arches((self.search_arch,), "compare.search_arch")
        check_tune(self.tune)
        for name, values in (
            ("methods", self.methods),
            ("arches", self.arches),
            ("seeds", self.seeds),
            ("budgets", self.budgets),
        ):
            if len(set(values)) != len(values):
                raise ValueError(f"compare.{name} has duplicates: {list(values)}")
        if any(b < 1 for b in self.budgets):
            raise ValueError(f"compare.budgets are compression rates >= 1, got {list(self.budgets)}")
        if self.epochs < 0:
            raise ValueError(f"compare.epochs must be >= 0, got {self.epochs}")
        for text in (*self.overrides, *(o for v in self.arch_overrides.values() for o in v)):
            if "=" not in text:
                raise ValueError(f"compare override {text!r}: expected KEY=VALUE")
        if self.select_metric and self.select_metric not in HIGHER_IS_BETTER + LOWER_IS_BETTER:
            raise ValueError(
                f"compare.select_metric {self.select_metric!r} is not one of {list(HIGHER_IS_BETTER + LOWER_IS_BETTER)}"
            )
