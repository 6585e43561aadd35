"""The method registry: every method name recdim knows, and where its method object lives.

One line per method. Config validation, the CLI's ``--method`` choices, ``recdim compare`` and the
pipeline read this table; the method object (a :class:`recdim.search.method.SearchMethod` or
:class:`recdim.search.method.BaselineMethod`) owns the rest: how a budget becomes its settings, how a
search result becomes pruned models, how a baseline assigns dimensions. The table names each object by
``"module:Class"`` and imports it on first use, so that reading a config does not import TorchRec.

Adding a method is one new file holding its method class, one line in :data:`METHODS` and its test.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple

MethodKind = Literal["search", "baseline"]


@dataclass(frozen=True)
class MethodEntry:
    """One registered method.

    Args:
        name: the name configs and the command line use (``search.method``, ``compare.methods``).
        target: ``"module:Class"`` of its method object.
        kind: ``search`` (trains a searching provider; ``recdim search`` runs it, ``recdim prune`` derives
            pruned models from it) or ``baseline`` (assigns dimensions at a budget; ``recdim compare``).
        arg: meaning of a ``name@<int>`` argument (``ue@8``: a dimension), or empty when the method takes
            none.
        help: one line for listings.
    """

    name: str
    target: str
    kind: MethodKind
    arg: str = ""
    help: str = ""

    def load(self) -> Any:
        """Imports and returns the method class."""
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)


def _entries(*entries: MethodEntry) -> Dict[str, MethodEntry]:
    return {e.name: e for e in entries}


METHODS: Dict[str, MethodEntry] = _entries(
    MethodEntry("dnis", "recdim.search.dnis:DNISMethod", "search", help="soft selection over frequency blocks (DNIS)"),
    MethodEntry("autosrh", "recdim.search.dnis:AutoSrhMethod", "search", help="the same search, AutoSrh's name"),
    MethodEntry("pep", "recdim.search.pep:PEPMethod", "search", help="learnable soft thresholds (PEP)"),
    MethodEntry("autodim", "recdim.search.autodim:AutoDimMethod", "search", help="per-field candidate dims (AutoDim)"),
    MethodEntry(
        "autodim_s",
        "recdim.search.autodim:AutoDimSoftMethod",
        "search",
        help="AutoDim-s: the searched soft mixture evaluated as is",
    ),
    MethodEntry(
        "magnitude",
        "recdim.search.magnitude:MagnitudeMethod",
        "search",
        help="magnitude pruning of the trained uniform table",
    ),
    MethodEntry(
        "ue", "recdim.search.baselines.uniform:UniformMethod", "baseline", arg="dimension", help="uniform embedding"
    ),
    MethodEntry("grid", "recdim.search.baselines.grid:GridMethod", "baseline", help="grid search over uniform dims"),
    MethodEntry(
        "random",
        "recdim.search.baselines.random_mixed:RandomMethod",
        "baseline",
        arg="sample",
        help="random search over mixed dims",
    ),
    MethodEntry("mde", "recdim.search.baselines.mde:MDEMethod", "baseline", help="mixed-dimension power rule (MDE)"),
    MethodEntry(
        "qr", "recdim.search.baselines.quotient_remainder:QRMethod", "baseline", help="quotient-remainder embedding"
    ),
    MethodEntry("hash", "recdim.search.baselines.hashing:HashingMethod", "baseline", help="hashed embedding rows"),
)


def names(kind: Optional[MethodKind] = None) -> Tuple[str, ...]:
    """Registered names, in registry order (of one ``kind`` when given)."""
    return tuple(n for n, e in METHODS.items() if kind is None or e.kind == kind)


def parse(name: str, field: str = "method") -> Tuple[MethodEntry, Optional[int]]:
    """Splits ``base@arg`` and looks ``base`` up: ``"ue@8" -> (<ue>, 8)``, ``"mde" -> (<mde>, None)``.

    Args:
        name: a method name, optionally with ``@<non-negative int>`` for methods that take one.
        field: the config field named in errors.

    Raises:
        ValueError: an unknown name, or an argument the method does not take or that is not an integer.

    Example::

        entry, arg = parse("random@3")   # entry.kind == "baseline", arg == 3
    """
    base, sep, arg = name.partition("@")
    entry = METHODS.get(base)
    if entry is None:
        with_args = ", ".join(f"{e.name}@<{e.arg}>" for e in METHODS.values() if e.arg)
        raise ValueError(f"{field}: {name!r} is not one of {list(METHODS)} (or {with_args})")
    if not sep:
        return entry, None
    if not entry.arg:
        raise ValueError(f"{field}: {base!r} takes no '@' argument, got {name!r}")
    if not arg.isdigit():
        raise ValueError(f"{field}: {name!r}: the part after '@' must be a non-negative integer")
    return entry, int(arg)


def entry(name: str, kind: Optional[MethodKind] = None, field: str = "method") -> MethodEntry:
    """The entry of ``name`` (no ``@`` argument), which must be of ``kind`` when given."""
    e = METHODS.get(name)
    if e is None or "@" in name or (kind is not None and e.kind != kind):
        raise ValueError(f"{field}: {name!r} is not one of {list(names(kind))}")
    return e
