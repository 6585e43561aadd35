"""A segment: a contiguous id range of one feature, and the width its rows are stored at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Sequence


@dataclass(frozen=True)
class Segment:
    """Ids ``[start, stop)`` of ``feature``, sharing one dimension.

    The same record serves the dimension baselines (a frequency block before its dimension is chosen:
    ``dim`` 0) and the mixed-dimension provider (one table per segment, at width ``dim``).

    Args:
        feature: the feature.
        start: first id.
        stop: one past the last id.
        dim: width d, a multiple of 4 in ``[0, K]`` (0 when not assigned yet, or dropped).
        projected: for ``0 < d < K``: lifted by a learnable ``[d, K]`` projection (MDE) when True,
            zero-padded to K (prefix dimensions) when False. Must be False for d = 0 and d = K.

    Example::

        Segment("user", 0, 100, dim=8, projected=True).rows    # 100
    """

    feature: str
    start: int
    stop: int
    dim: int = 0
    projected: bool = False

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def to_json(self) -> List[Any]:
        return [self.feature, self.start, self.stop, self.dim, self.projected]

    @staticmethod
    def from_json(data: Sequence[Any]) -> "Segment":
        f, a, b, d, p = data
        return Segment(str(f), int(a), int(b), int(d), bool(p))
