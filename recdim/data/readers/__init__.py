"""Raw readers: one per source format, all yielding :class:`~recdim.data.readers.base.RawChunk`\\ s.

Example::

    reader = make_reader(PrepareConfig(source="movielens", input="../shared/datasets/ml-100k"))
    reader.schema_hint.label  # LabelKind.RATING
"""

from __future__ import annotations

from recdim.config import PrepareConfig
from recdim.data.readers.amazon import AmazonReader
from recdim.data.readers.avazu import AvazuReader
from recdim.data.readers.base import BadRowBudget, RawChunk, RawField, RawKind, RawReader, RawSchema
from recdim.data.readers.criteo import CriteoReader
from recdim.data.readers.kdd12 import KDD12Reader
from recdim.data.readers.movielens import MovieLensReader
from recdim.data.readers.tabular import TabularReader

__all__ = [
    "AmazonReader",
    "AvazuReader",
    "BadRowBudget",
    "CriteoReader",
    "KDD12Reader",
    "MovieLensReader",
    "RawChunk",
    "RawField",
    "RawKind",
    "RawReader",
    "RawSchema",
    "TabularReader",
    "make_reader",
]


def make_reader(cfg: PrepareConfig) -> RawReader:
    """The reader for ``cfg.source`` (``synthetic`` ignores ``cfg.input``).

    Args:
        cfg: the prepare config.

    Returns:
        A :class:`RawReader`.

    Example::

        make_reader(PrepareConfig(source="criteo", input="criteo/train.txt")).name  # "criteo"
    """
    if cfg.source == "synthetic":
        from recdim.data.synthetic import SyntheticReader

        return SyntheticReader(cfg.synthetic)
    if not cfg.input:
        raise ValueError(f"prepare.input is empty: source {cfg.source!r} needs a raw file or directory")
    if cfg.source == "movielens":
        return MovieLensReader(cfg.input, task=cfg.task, variant=cfg.movielens.variant)
    if cfg.source == "criteo":
        return CriteoReader(cfg.input)
    if cfg.source == "avazu":
        return AvazuReader(cfg.input)
    if cfg.source == "kdd12":
        return KDD12Reader(cfg.input)
    if cfg.source == "amazon":
        return AmazonReader(cfg.input, task=cfg.task, order=cfg.amazon.order)
    if cfg.source == "tabular":
        return TabularReader(cfg.input, cfg.tabular)
    raise ValueError(f"unknown prepare.source {cfg.source!r}")
