"""Settings of the PEP search (learnable soft thresholds); imports nothing heavy so configs can use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Tuple


@dataclass(frozen=True)
class PEPConfig:
    """PEP: soft-threshold every embedding value, S(V, s) = sign(V) * relu(|V| - g(s)), and train s.

    The pruning pressure is explicit (see :mod:`recdim.modules.threshold`): by default s starts at
    ``threshold_init`` (where g(s) is tiny but its gradient is not zero) and a linear ramp lifts every
    threshold from there to ``ramp_to`` over ``ramp_steps`` steps (by default the whole planned run), on
    top of what the loss does to s. The paper's behaviour (s = -150, pushed up only by Adam's coupled
    weight decay) is :meth:`paper`.

    Args:
        granularity: ``global`` (one s), ``dimension`` (s in R^K), ``feature`` (one s per sparse feature,
            i.e. per field) or ``feature_dimension`` (s in R^{N x K}, stored beside the table rows).
        gate: g, the map from s to a threshold: ``sigmoid`` (the paper's) or ``exp``.
        threshold_init: initial s. Keep it where g'(s) is representable: -8 .. -15 for sigmoid.
        pressure: what pushes s up: ``ramp`` (a linear schedule) or ``coupled_l2`` (adds
            ``l2_strength * (s - l2_target)`` to the gradient of s before the dense optimizer).
        ramp_steps: steps the ramp takes to add ``ramp_to - threshold_init`` to s; 0 means the planned run
            (``train.max_steps``, else ``train.epochs`` x steps per epoch). The ramp goes on past it.
        ramp_to: where the ramp takes s (0: g = 0.5 for sigmoid, which prunes nearly everything).
        l2_strength: coupled L2 strength under ``coupled_l2`` (Adam's ``weight_decay`` when the target is 0).
        l2_target: the value the coupled L2 pulls s toward.
        budgets: target fractions of non-zero values (nnz / sum of N * K), each in (0, 1); empty (the
            default) means ``1 / cr`` for each of ``prune.crs``. The first time the thresholded tables fall
            to a budget its masks are kept, at exactly that fraction (an extra offset on every threshold,
            for the snapshot only); training stops at the smallest. A budget training does not reach is
            reached at the end by raising the thresholds alone (recorded as ``forced``).
        check_every: the fewest training steps between non-zero counts (each count scans every table, or
            the rows trained since the last count).
        check_lookahead: fraction of the steps predicted to remain until the next budget that may pass
            before the next count (:class:`~recdim.search.count_schedule.CountSchedule`); 0 counts every
            ``check_every`` steps.
        max_check_gap: the most training steps between counts.
        count_sample: on tables of at least ``count_sample_above`` values, a due count first estimates the
            survivors from this fraction of each shard's rows and counts exactly only once the estimate is
            within 5 standard errors of the next budget (:class:`~recdim.search.sampled_count.SampledCount`);
            0 always counts exactly.
        count_sample_above: table values (sum of N * K) from which counts are sampled first.

    Example::

        cfg = PEPConfig(granularity="dimension", ramp_steps=20_000, budgets=(0.5, 0.2, 0.1))
    """

    granularity: Literal["global", "dimension", "feature", "feature_dimension"] = "feature_dimension"
    gate: Literal["sigmoid", "exp"] = "sigmoid"
    threshold_init: float = -8.0
    pressure: Literal["ramp", "coupled_l2"] = "ramp"
    ramp_steps: int = 0
    ramp_to: float = 0.0
    l2_strength: float = 1e-4
    l2_target: float = 0.0
    budgets: Tuple[float, ...] = ()
    check_every: int = 1
    check_lookahead: float = 0.5
    max_check_gap: int = 16
    count_sample: float = 1 / 256
    count_sample_above: int = 1 << 24

    def __post_init__(self) -> None:
        if any(not 0.0 < b < 1.0 for b in self.budgets):
            raise ValueError(f"pep.budgets must be fractions in (0, 1), got {self.budgets}")
        if self.check_every < 1:
            raise ValueError(f"pep.check_every must be >= 1, got {self.check_every}")
        if not 0.0 <= self.check_lookahead < 1.0:
            raise ValueError(f"pep.check_lookahead must be in [0, 1), got {self.check_lookahead}")
        if not 0.0 <= self.count_sample <= 1.0 or self.count_sample_above < 0:
            raise ValueError(
                f"pep.count_sample must be in [0, 1] and pep.count_sample_above >= 0, got {self.count_sample}, "
                f"{self.count_sample_above}"
            )
        if self.max_check_gap < self.check_every:
            raise ValueError(
                f"pep.max_check_gap ({self.max_check_gap}) must be >= pep.check_every ({self.check_every})"
            )
        if self.ramp_steps < 0 or self.l2_strength < 0:
            raise ValueError("pep.ramp_steps and pep.l2_strength must be >= 0")
        if self.pressure == "ramp" and self.ramp_to <= self.threshold_init:
            raise ValueError(f"pep.ramp_to ({self.ramp_to}) must be above pep.threshold_init ({self.threshold_init})")
        if self.pressure == "coupled_l2" and self.granularity == "feature_dimension":
            raise ValueError(
                "pep.pressure = 'coupled_l2' needs dense thresholds; feature_dimension thresholds live in the "
                "table and are trained by the fused optimizer, use pressure = 'ramp'"
            )

    @classmethod
    def paper(cls, granularity: str = "dimension", weight_decay: float = 1e-4, **kwargs: object) -> "PEPConfig":
        """The published setting, for reproduction: s = -150 moved only by coupled weight decay.

        In float32 sigmoid(-150) and its gradient are exactly 0, so the loss never reaches s; Adam's
        coupled weight decay (gradient ``weight_decay * s``, normalised by Adam) drags s up by about the
        learning rate per step until g(s) leaves zero, and only then does pruning start.
        """
        return cls(
            granularity=granularity,  # type: ignore[arg-type]
            threshold_init=-150.0,
            pressure="coupled_l2",
            l2_strength=weight_decay,
            l2_target=0.0,
            **kwargs,  # type: ignore[arg-type]
        )
