"""Settings of the dimension baselines (kept free of heavy imports so that ``recdim.config`` can use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Tuple

PAPER_GRID: Tuple[int, ...] = tuple(range(4, 65, 4))


@dataclass(frozen=True)
class BaselineConfig:
    """Uniform (UE), grid, random and MDE dimension baselines.

    Every baseline gives each row i a prefix dimension d_i (a multiple of 4, FBGEMM's training TBE, in
    ``[0, K]``); the budget is a compression rate (CR = uniform parameters / kept parameters).

    Args:
        ue_dim: UE's dimension; 0 means the largest multiple of 4 that meets the CR.
        grid: uniform dimensions tried by grid search (the papers: 4..64 step 4); those above K or over
            the budget are left out, the rest are trained and the best on validation is kept.
        random_samples: N, random mixed-dimension samples tried by random search.
        random_seed: seed of the samples (sample i is drawn from ``(random_seed, i)`` alone).
        random_min_dim: smallest dimension a block may get after scaling to the budget (0 drops it).
        mde_alpha: alpha of MDE's power rule d = lambda * p ** alpha (0: uniform; the DLRM default 0.3).
        mde_pow2: round MDE dimensions to powers of two (4, 8, 16, ...) instead of multiples of 4.
        mde_min_dim: smallest MDE dimension (4 is the narrowest TBE width). A budget below every block at
            ``mde_min_dim`` (CR above K / 4 at the default) lowers the floor to 0: the least popular blocks are
            dropped first.
        num_blocks: L, frequency blocks per feature (random search and MDE; as DNIS's ``num_blocks``).
            MDE per table, as the DLRM code does it, is ``num_blocks = 1, blocking = "per_table"``.
        blocking: ``global`` or ``per_table`` (see :mod:`recdim.layout.blocks`). Random search draws one
            dimension per alpha row: L shared by all features (global) or L per feature (per table).

    Example::

        BaselineConfig(mde_alpha=0.3, num_blocks=10, blocking="per_table")
    """

    ue_dim: int = 0
    grid: Tuple[int, ...] = PAPER_GRID
    random_samples: int = 8
    random_seed: int = 0
    random_min_dim: int = 0
    mde_alpha: float = 0.3
    mde_pow2: bool = False
    mde_min_dim: int = 4
    num_blocks: int = 10
    blocking: Literal["global", "per_table"] = "global"

    def __post_init__(self) -> None:
        for name in ("ue_dim", "random_min_dim", "mde_min_dim"):
            v = getattr(self, name)
            if v < 0 or v % 4:
                raise ValueError(f"baseline.{name} must be a non-negative multiple of 4, got {v}")
        if not self.grid or any(d <= 0 or d % 4 for d in self.grid):
            raise ValueError(f"baseline.grid must be positive multiples of 4, got {self.grid}")
        if self.random_samples < 1:
            raise ValueError(f"baseline.random_samples must be >= 1, got {self.random_samples}")
        if self.mde_alpha < 0:
            raise ValueError(f"baseline.mde_alpha must be >= 0, got {self.mde_alpha}")
        if self.num_blocks < 1:
            raise ValueError(f"baseline.num_blocks must be >= 1, got {self.num_blocks}")
        if self.blocking not in ("global", "per_table"):
            raise ValueError(f"baseline.blocking must be 'global' or 'per_table', got {self.blocking!r}")
