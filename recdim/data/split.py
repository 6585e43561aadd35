"""Train / val / test assignment of rows: seeded random by row key, or by time.

Both are deterministic functions of a row's own values (its line number, its timestamp), so the
assignment does not depend on how the stream is chunked.

- :class:`RandomSplit`: ``u = splitmix64(splitmix64(seed) ^ line) / 2^64``; train if ``u < f_train``,
  val if ``u < f_train + f_val``, else test.
- :class:`TimeSplit`: rows ordered by ``(time, line)``; the first ``f_train`` of them are train, the
  next ``f_val`` val, the rest test. The cut points are found from the timestamps alone (one pass,
  16 bytes per row), by selection rather than a full sort.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser applied elementwise (uint64 -> uint64, wrapping arithmetic).

    Args:
        x: uint64 array.

    Returns:
        uint64 array of the same shape, well mixed.

    Example::

        splitmix64(np.arange(3, dtype=np.uint64))
    """
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def uniform(seed: int, keys: np.ndarray) -> np.ndarray:
    """A uniform [0, 1) number per key, a pure function of ``(seed, key)``.

    Args:
        seed: split seed.
        keys: int64 [N] row keys.

    Returns:
        float64 [N].
    """
    salt = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    bits = splitmix64(keys.astype(np.int64).view(np.uint64) ^ salt)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class RandomSplit:
    """Seeded random split by row key (the row's line number).

    Args:
        fractions: train / val / test fractions (sum 1).
        seed: split seed.

    Example::

        RandomSplit((0.8, 0.1, 0.1), seed=0).assign(lines, None)  # int8 [N] in {0, 1, 2}
    """

    def __init__(self, fractions: Sequence[float], seed: int) -> None:
        self.edges = (fractions[0], fractions[0] + fractions[1])
        self.seed = seed

    def assign(self, lines: np.ndarray, time: Optional[np.ndarray]) -> np.ndarray:
        """Split code (0 train, 1 val, 2 test) per row."""
        u = uniform(self.seed, lines)
        return (u >= self.edges[0]).astype(np.int8) + (u >= self.edges[1]).astype(np.int8)


def _kth_pair(time: np.ndarray, lines: np.ndarray, k: int) -> Tuple[float, int]:
    """The ``k``-th smallest ``(time, line)`` pair (0-based) without sorting everything."""
    t = np.partition(time, k)[k]
    below = int((time < t).sum())
    tied = lines[time == t]
    return float(t), int(np.partition(tied, k - below)[k - below])


class TimeSplit:
    """Split by time: earliest rows train, then val, then test (ties broken by line).

    Args:
        time: float64 [N] timestamps of all rows (in any order).
        lines: int64 [N] their line numbers.
        fractions: train / val / test fractions (sum 1).

    Example::

        split = TimeSplit(all_times, all_lines, (0.8, 0.1, 0.1))
        split.assign(chunk.lines, chunk.time)
    """

    def __init__(self, time: np.ndarray, lines: np.ndarray, fractions: Sequence[float]) -> None:
        n = len(time)
        k_train = int(round(n * fractions[0]))
        k_val = int(round(n * (fractions[0] + fractions[1])))
        self.cuts = tuple(_kth_pair(time, lines, k) if k < n else None for k in (k_train, k_val))

    def assign(self, lines: np.ndarray, time: Optional[np.ndarray]) -> np.ndarray:
        """Split code (0 train, 1 val, 2 test) per row."""
        if time is None:
            raise ValueError("TimeSplit needs the time column")
        code = np.zeros(len(lines), dtype=np.int8)
        for cut in self.cuts:
            if cut is not None:
                at_or_after = (time > cut[0]) | ((time == cut[0]) & (lines >= cut[1]))
                code += at_or_after.astype(np.int8)
        return code
