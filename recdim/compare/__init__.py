"""``recdim compare``: a grid of experiments (method x arch x budget x seed), resumable, with a report.

Importing the package is cheap (``recdim.config`` reads :class:`CompareConfig` from it); the runner
(:func:`recdim.compare.runner.run_compare`) and the report (:func:`recdim.compare.report.write_compare_report`)
load on use.
"""

from recdim.config.compare import CompareConfig

__all__ = ["CompareConfig"]
