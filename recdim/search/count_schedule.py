"""When PEP counts its surviving values: every few steps near a budget, rarely far from one.

A count is the one part of a PEP step that grows with the tables (a pass over every table, or over the rows
a step touched); the threshold pressure moves the count slowly and smoothly, so most counts say only that
no budget is near. :class:`CountSchedule` predicts, from the last two counts, how many steps remain until
the next budget is crossed and lets a fraction (``lookahead``) of them pass before the next count; where
the count does not fall it backs off geometrically. Near a budget it counts every ``every`` steps, as a
fixed schedule does, so a budget is still caught at (or within a few steps of) its first crossing, and its
snapshot is taken at exactly its count either way (``PEPHook.snapshot``). ``lookahead = 0`` is the fixed
schedule: a count every ``every`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple


@dataclass
class CountSchedule:
    """The steps at which PEP counts surviving values.

    Args:
        every: the shortest gap between counts (steps); every gap is a multiple of it.
        lookahead: fraction of the predicted steps to the next budget that may pass before the next count
            (0: count every ``every`` steps).
        max_gap: the longest gap (steps), so that a count falling faster than predicted is caught soon.

    Example::

        sched = CountSchedule(every=1, lookahead=0.5, max_gap=64)
        sched.observe(step=10, nnz=9_000, target=5_000)    # first count: next at 11
        sched.observe(step=11, nnz=8_900, target=5_000)    # 100 a step, 39 steps to go: next at 11 + 19
        sched.due(29), sched.due(30)                        # False, True
    """

    every: int = 1
    lookahead: float = 0.5
    max_gap: int = 16
    _next: int = field(default=0, init=False)
    _last: Optional[Tuple[int, int]] = field(default=None, init=False)
    _gap: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"pep.check_every must be >= 1, got {self.every}")
        if not (0.0 <= self.lookahead < 1.0):
            raise ValueError(f"pep.check_lookahead must be in [0, 1), got {self.lookahead}")
        if self.max_gap < self.every:
            raise ValueError(f"pep.max_check_gap ({self.max_gap}) must be >= pep.check_every ({self.every})")

    def due(self, step: int) -> bool:
        """Whether the hook counts after ``step`` (``step`` training steps done)."""
        return step % self.every == 0 and step >= self._next

    def observe(self, step: int, nnz: int, target: int) -> int:
        """Records a count at ``step`` (``nnz`` surviving values; ``target``: the next pending budget's count)
        and returns the step of the next count."""
        gap = self.every
        if self.lookahead > 0 and self._last is not None and nnz > target:
            last_step, last_nnz = self._last
            fall = (last_nnz - nnz) / max(1, step - last_step)  # values lost per step
            if fall > 0:
                gap = int(self.lookahead * (nnz - target) / fall) if math.isfinite(fall) else self.every
            else:  # not falling (yet): back off
                gap = 2 * max(self._gap, self.every)
        gap = max(self.every, min(self.max_gap, gap)) // self.every * self.every
        self._gap, self._last, self._next = gap, (step, nnz), step + gap
        return self._next

    def state_dict(self) -> Dict[str, Any]:
        """The schedule's position, for checkpoints (a resumed run counts at the same steps)."""
        return {"next": self._next, "last": list(self._last) if self._last else None, "gap": self._gap}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._next = int(state["next"])
        self._last = (int(state["last"][0]), int(state["last"][1])) if state["last"] else None
        self._gap = int(state["gap"])
