"""Test-only fault injection: kill a worker at a chosen point, once, to exercise restart and resume.

A fault exists only when the environment variable ``RECDIM_TEST_FAULT`` is set (nothing in recdim, its
configs or its launchers sets it), and it fires only on the first attempt of a torchrun job
(``TORCHELASTIC_RESTART_COUNT`` unset or 0), so the restarted job runs to the end. The value is
``POINT:RANK:STEP``:

- ``after_step:1:45``: rank 1 exits right after training step 45 (and after that step's checkpoint,
  when one is due).
- ``checkpoint_commit:0:40``: rank 0 exits while the checkpoint of step 40 is being written: every shard
  is on disk, the checkpoint is not yet committed (still ``step-40.tmp``, ``latest`` unchanged).

The process leaves with ``os._exit(FAULT_EXIT_CODE)``: no cleanup, no flushing, like a killed worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

ENV_VAR = "RECDIM_TEST_FAULT"
POINTS = ("after_step", "checkpoint_commit")
FAULT_EXIT_CODE = 17


@dataclass(frozen=True)
class Fault:
    """Where to crash.

    Args:
        point: one of :data:`POINTS`.
        rank: the global rank that crashes.
        step: the global training step at which it crashes.
    """

    point: str
    rank: int
    step: int

    @classmethod
    def parse(cls, value: str) -> "Fault":
        """Parses ``POINT:RANK:STEP``.

        Example::

            Fault.parse("after_step:1:45")  # Fault(point="after_step", rank=1, step=45)
        """
        parts = value.split(":")
        if len(parts) != 3 or parts[0] not in POINTS or not parts[1].isdigit() or not parts[2].isdigit():
            raise ValueError(f"{ENV_VAR}={value!r}: expected POINT:RANK:STEP with POINT in {POINTS}")
        return cls(parts[0], int(parts[1]), int(parts[2]))


@lru_cache(maxsize=1)
def configured_fault() -> Optional[Fault]:
    """The fault of this process, or None (always None unless ``RECDIM_TEST_FAULT`` is set and this is
    the first attempt of the job)."""
    value = os.environ.get(ENV_VAR, "")
    if not value or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    return Fault.parse(value)


def maybe_crash(point: str, rank: int, step: int) -> None:
    """Exits the process now if the configured fault is ``(point, rank, step)``; otherwise returns.

    Args:
        point: the injection point being passed.
        rank: this process's global rank.
        step: the current global step.
    """
    fault = configured_fault()
    if fault is not None and (fault.point, fault.rank, fault.step) == (point, rank, step):
        os._exit(FAULT_EXIT_CODE)
