"""Fair tuning in ``recdim compare``: every method, the uniform table included, runs the same small grid
of training settings (``compare.tune``) and each cell keeps the setting best on validation.

A setting is one combination of the values of ``compare.tune`` (the product over its keys, in sorted key
order), applied as ``--set`` overrides to the cell's config, the search's included. Selection reads only
the validation metrics (``compare.select_metric``); test is read once per run and never compared.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from recdim.config.compare import check_tune


@dataclass(frozen=True)
class TuneSetting:
    """One combination of ``compare.tune``.

    Args:
        label: directory-safe name, ``tune<i>`` in product order.
        values: ``{"train.embedding_lr": 0.03, ...}``.
    """

    label: str
    values: Tuple[Tuple[str, Any], ...]

    @property
    def overrides(self) -> List[str]:
        """The setting as ``key=value`` overrides (values written as TOML literals)."""
        return [f"{k}={json.dumps(v)}" for k, v in self.values]

    def describe(self) -> str:
        """``"embedding_lr=0.03, embedding_l2=0"``: the last part of each key, with its value."""
        parts = [(k.rsplit(".", 1)[-1], f"{v:g}" if _is_num(v) else str(v)) for k, v in self.values]
        return ", ".join(f"{name}={text}" for name, text in parts)

    def to_json(self) -> Dict[str, Any]:
        return {"label": self.label, "values": dict(self.values)}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def tune_grid(tune: Mapping[str, Sequence[Any]]) -> List[TuneSetting]:
    """Every setting of ``tune`` (empty: no tuning, an empty list).

    Args:
        tune: ``{config key: values}``.

    Returns:
        ``prod(len(values))`` settings, keys in sorted order, the last key varying fastest.

    Example::

        [s.describe() for s in tune_grid({"train.embedding_lr": [0.03, 0.1], "train.embedding_l2": [0.0]})]
        # ['embedding_l2=0, embedding_lr=0.03', 'embedding_l2=0, embedding_lr=0.1']
    """
    check_tune(tune)
    if not tune:
        return []
    keys = sorted(tune)
    return [
        TuneSetting(f"tune{i}", tuple(zip(keys, combo)))
        for i, combo in enumerate(itertools.product(*(list(tune[k]) for k in keys)))
    ]
