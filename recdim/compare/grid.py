"""The comparison grid: cells (method x arch x budget x seed), their run ids and their configs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List, Sequence, TypeVar

from recdim.config.compare import CompareConfig, variant_base
from recdim.config.methods import parse
from recdim.config_io import apply_overrides, from_dict, to_dict

C = TypeVar("C")


def format_cr(cr: float) -> str:
    """``4.0 -> "4"``, ``2.5 -> "2.5"``."""
    return f"{cr:g}"


@dataclass(frozen=True)
class Cell:
    """One experiment of the grid.

    Args:
        method: method name (``dnis``, ``ue``, ``grid``, ``random@3``, ...).
        arch: interaction arch.
        cr: compression rate.
        seed: training seed.
        search_arch: the arch a search method searches with when it is not ``arch`` (transferability,
            ``compare.search_arch``); empty: ``arch``.
    """

    method: str
    arch: str
    cr: float
    seed: int
    search_arch: str = ""

    @property
    def searched_on(self) -> str:
        """The arch the cell's search runs with."""
        return self.search_arch or self.arch

    @property
    def transfers(self) -> bool:
        """Whether the dimensions are searched on another arch than the one retrained."""
        return self.searched_on != self.arch

    @property
    def run_id(self) -> str:
        """Directory-safe id, ``<arch>/cr<cr>/<method>/seed<seed>``."""
        return f"{_safe(self.arch)}/cr{format_cr(self.cr)}/{_safe(self.method)}/seed{self.seed}"

    @property
    def search_id(self) -> str:
        """Directory of a search that does not depend on the budget, shared by every budget (and, under
        transfer, every retrained arch) of the same (search arch, method, seed):
        ``<search arch>/searches/<method>-seed<seed>``."""
        return f"{_safe(self.searched_on)}/searches/{_safe(self.method)}-seed{self.seed}"

    def search_cell(self) -> "Cell":
        """The cell whose config the search runs with: this one on its search arch."""
        return Cell(self.method, self.searched_on, self.cr, self.seed)

    def describe(self) -> str:
        searched = f" (searched on {self.search_arch})" if self.transfers else ""
        return f"{self.method} {self.arch}{searched} cr={format_cr(self.cr)} seed={self.seed}"

    def to_json(self) -> dict:
        out = {"method": self.method, "arch": self.arch, "cr": self.cr, "seed": self.seed, "run_id": self.run_id}
        if self.search_arch:
            out["search_arch"] = self.search_arch
        return out


def _safe(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.@+-]+", name):
        raise ValueError(f"{name!r} cannot name a run directory (letters, digits, _ . @ + - only)")
    return name


def expand_grid(compare: CompareConfig, default_arch: str) -> List[Cell]:
    """Every cell, ordered arch -> budget -> seed -> method (a partial run already compares methods).

    Args:
        compare: the grid.
        default_arch: the arch when ``compare.arches`` is empty (``model.arch``).

    Returns:
        ``len(arches) * len(budgets) * len(seeds) * len(methods)`` cells; search methods carry
        ``compare.search_arch``.

    Example::

        expand_grid(CompareConfig(methods=("ue", "mde"), budgets=(2.0,), seeds=(0, 1)), "dlrm")[0].run_id
        # 'dlrm/cr2/ue/seed0'
    """
    arches = compare.arches or (default_arch,)
    searches = {m: compare.search_arch if parse(variant_base(m))[0].kind == "search" else "" for m in compare.methods}
    return [
        Cell(method, arch, float(cr), int(seed), searches[method])
        for arch in arches
        for cr in compare.budgets
        for seed in compare.seeds
        for method in compare.methods
    ]


def override_config(cfg: C, overrides: Sequence[str]) -> C:
    """A copy of the (frozen) config with ``key=value`` overrides applied and validated strictly."""
    if not overrides:
        return cfg
    data = apply_overrides(to_dict(cfg), list(overrides))
    return from_dict(type(cfg), data, source="compare overrides")


def cell_config(cfg: C, compare: CompareConfig, cell: Cell) -> C:
    """The config one cell runs with: ``model.arch``, ``train.seed``, ``compare.epochs`` and the overrides
    (``compare.overrides``, then the arch's, then the method variant's).

    Args:
        cfg: the experiment config (any dataclass with ``model`` and ``train`` sections).
        compare: the grid settings.
        cell: the cell.

    Returns:
        The cell's config (validated: an unknown arch or key raises ``ConfigError``).
    """
    sets: List[str] = [f'model.arch="{cell.arch}"', f"train.seed={cell.seed}"]
    if compare.epochs:
        sets.append(f"train.epochs={compare.epochs}")
    sets += list(compare.overrides)
    sets += list(compare.arch_overrides.get(cell.arch, ()))
    sets += list(compare.variants.get(cell.method, ()))
    return override_config(cfg, sets)


def config_echo(cfg: Any) -> Any:
    """The plain-dict form of a config, for result files."""
    return to_dict(cfg)
