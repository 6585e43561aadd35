"""Dimension baselines as per-row prefix dimensions: uniform (UE), grid search, random search, MDE.

Each returns a :class:`DimAssignment` (``{feature: int64 [N]}``, multiples of 4 in ``[0, K]``, row i
keeping columns ``[0, d_i)``) that meets a compression rate; :func:`row_dims_to_masks` turns it into the
``{feature: bool [N, K]}`` masks the tier planner reads.

Importing the package is cheap (``recdim.config`` reads :class:`BaselineConfig` from it); everything
else loads on first use.
"""

from importlib import import_module
from typing import Any

from recdim.config.baseline import BaselineConfig

_EXPORTS = {
    "DimAssignment": "recdim.layout.dims",
    "Projection": "recdim.layout.dims",
    "Segment": "recdim.layout.dims",
    "budget_for_cr": "recdim.layout.dims",
    "row_dims_to_masks": "recdim.layout.dims",
    "grid_dims": "grid",
    "mde_dims": "mde",
    "BASELINES": "methods",
    "baseline_dims": "methods",
    "candidate_methods": "methods",
    "is_baseline": "methods",
    "parse_method": "methods",
    "random_mixed_dims": "random_mixed",
    "NearestMultiple": "scaling",
    "NearestPowerOfTwo": "scaling",
    "fit_scale": "scaling",
    "uniform_dim_for_cr": "uniform",
    "uniform_dims": "uniform",
    "uniform_for_cr": "uniform",
}

__all__ = ["BaselineConfig", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = _EXPORTS[name]
        return getattr(import_module(module if "." in module else f"recdim.search.baselines.{module}"), name)
    raise AttributeError(f"module 'recdim.search.baselines' has no attribute {name!r}")
