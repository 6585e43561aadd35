"""PEP search driver: the pressure on the thresholds, non-zero counting and once-for-all mask snapshots.

PEP trains V and s jointly on the training loss (no validation steps). This module adds what the loop
needs around :class:`~recdim.modules.threshold.ThresholdEmbeddingProvider`:

- a :class:`ThresholdPressure` that pushes s up (:class:`LinearRamp`, the default, or :class:`CoupledL2`,
  which with s = -150 reproduces the paper; see the provider's module docstring for why);
- :class:`PEPHook`, which counts the surviving values over all shards (one all-reduced integer,
  :mod:`recdim.search.pep_tables`) on a :class:`~recdim.search.count_schedule.CountSchedule` (every
  ``check_every`` steps near a budget, rarely far from one), keeps the masks the first time the count
  falls to each budget (bool [N, K] per table, held bit-packed on every rank so checkpoints hold them)
  and stops training once the smallest budget is reached;
- :class:`PEPMethod`, the :class:`~recdim.search.method.SearchMethod` tying them to a session.

Lookup paths: :meth:`PEPMethod.provider_factory` reads the dataset schema. ``CATEGORICAL`` and
``WEIGHTED`` fields hold exactly one id per row, so their tables go into the provider's
EmbeddingBagCollection and are thresholded after the pooled lookup (a bag of one id pools to its row:
exact, and several times cheaper to train on CPU than per-id lookups); ``MULTI_CATEGORICAL`` fields (bags)
stay in its EmbeddingCollection and are thresholded per id before pooling. Tables are ``t_<feature>`` on
both paths, so masks, snapshots and thresholds files do not depend on the split.

Lottery-ticket rewind needs no copy of the initial tables: :func:`recdim.modules.table_init.table_rows` regenerates
them from the seed written in ``snapshots.json`` and the table's state-dict key
(:meth:`~recdim.modules.threshold.ThresholdEmbeddingProvider.table_key`, which depends on the path; for
``feature_dimension`` the values are the even columns of the [N, 2K] table).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.utils.hooks import RemovableHandle

from recdim.config import Config, ModelConfig, PruneConfig
from recdim.config.pep import PEPConfig
from recdim.data.prepared import PreparedDataset
from recdim.data.schema import FieldKind
from recdim.layout.field_budget import field_kept_counts, field_top_masks
from recdim.layout.masks import check_met_cr, kept_for_cr, mask_stats
from recdim.layout.pruned import PrunedModel
from recdim.modules.table_init import table_rows
from recdim.modules.threshold import GATES, ThresholdEmbeddingProvider, make_thresholds, survival_keys
from recdim.modules.uniform import table_name
from recdim.search.count_schedule import CountSchedule
from recdim.search.field_importance import field_allocation, search_split_field_importance
from recdim.search.kept_counter import FrozenKeys, KeptCounter, fused_sparse_tables
from recdim.search.method import SearchedModel, SearchMethod, with_search
from recdim.search.pep_tables import (
    count_nonzeros,
    gather_masks,
    gather_thresholds,
    init_threshold_tables,
    rank_and_world,
    table_pieces,
)
from recdim.search.sampled_count import SampledCount
from recdim.train.build import ProviderFactory
from recdim.train.hooks import StepHook

__all__ = [
    "CoupledL2",
    "LinearRamp",
    "PEPHook",
    "PEPMethod",
    "Snapshot",
    "ThresholdPressure",
    "build_threshold_provider",
    "count_nonzeros",
    "gather_masks",
    "gather_thresholds",
    "init_threshold_tables",
    "initial_values",
    "pressures",
    "single_valued_features",
    "table_pieces",
]

log = logging.getLogger(__name__)

SINGLE_VALUED_KINDS = (FieldKind.CATEGORICAL, FieldKind.WEIGHTED)


class ThresholdPressure:
    """Something that pushes the thresholds up during training. Does nothing by default."""

    def attach(self, provider: ThresholdEmbeddingProvider, step: int) -> None:
        """Called once before training, at global step ``step``."""

    def after_step(self, provider: ThresholdEmbeddingProvider, step: int) -> None:
        """Called after each training step (``step`` steps done)."""


class LinearRamp(ThresholdPressure):
    """Adds ``rate * max(0, step - start)`` to every threshold (the provider's ``threshold_offset``).

    Equivalent to adding ``rate`` to every s after each step, without touching the tables; the loss keeps
    training s around the ramp, so thresholds the loss needs low lag behind the others.

    Args:
        rate: increase of s per step.
        start: first step of the ramp.

    Example::

        hook = PEPHook(provider, budgets=(0.5, 0.1), pressures=[LinearRamp(0.01)])
    """

    def __init__(self, rate: float, start: int = 0) -> None:
        self.rate = float(rate)
        self.start = int(start)

    def offset(self, step: int) -> float:
        return self.rate * max(0, step - self.start)

    def attach(self, provider: ThresholdEmbeddingProvider, step: int) -> None:
        provider.threshold_offset.fill_(self.offset(step))

    def after_step(self, provider: ThresholdEmbeddingProvider, step: int) -> None:
        provider.threshold_offset.fill_(self.offset(step))


class CoupledL2(ThresholdPressure):
    """Adds ``strength * (s - target)`` to the gradient of the dense thresholds before the optimizer.

    This is an L2 term ``strength / 2 * ||s - target||^2`` in the training loss; with ``target = 0`` it is
    exactly Adam's coupled ``weight_decay`` on s, the mechanism that makes the published PEP prune
    (``PEPConfig.paper()``). Dense thresholds only: a table-resident s is updated inside the fused kernel.

    Args:
        strength: the L2 coefficient.
        target: the value s is pulled toward.
    """

    def __init__(self, strength: float, target: float = 0.0) -> None:
        self.strength = float(strength)
        self.target = float(target)
        self._handles: List[RemovableHandle] = []

    def attach(self, provider: ThresholdEmbeddingProvider, step: int) -> None:
        params = provider.threshold_parameters()
        if not params:
            raise ValueError("CoupledL2 needs dense thresholds; this provider keeps s in its tables")
        for h in self._handles:
            h.remove()
        self._handles = [p.register_hook(self._hook(p)) for p in params]

    def _hook(self, p: torch.nn.Parameter) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda grad: grad + self.strength * (p.detach() - self.target)


def pressures(cfg: PEPConfig, planned_steps: int) -> List[ThresholdPressure]:
    """The pressures a :class:`PEPConfig` names; ``planned_steps`` is the run length a ramp spans when
    ``cfg.ramp_steps`` is 0."""
    if cfg.pressure == "ramp":
        steps = cfg.ramp_steps or planned_steps
        if steps < 1:
            raise ValueError("the PEP ramp needs pep.ramp_steps or a known run length")
        return [LinearRamp((cfg.ramp_to - cfg.threshold_init) / steps)]
    return [CoupledL2(cfg.l2_strength, cfg.l2_target)]


@dataclass
class Snapshot:
    """The masks kept when the non-zero count first fell to ``budget`` (bit-packed along K, the same on
    every rank so that checkpoints hold them), with the offset that met the budget exactly; ``forced``
    when training ended first and the offset alone reached it."""

    budget: float
    step: int
    nnz: int
    total: int
    offset: float
    packed: Dict[str, np.ndarray]
    forced: bool = False

    def masks(self, embedding_dim: int) -> Dict[str, torch.Tensor]:
        """The masks as ``{table: bool [N, K]}``."""
        return {
            k: torch.from_numpy(np.unpackbits(v, axis=1, count=embedding_dim).astype(bool))
            for k, v in self.packed.items()
        }

    def summary(self) -> Dict[str, Any]:
        return {
            "budget": self.budget,
            "step": self.step,
            "nnz": self.nnz,
            "total": self.total,
            "keep_fraction": self.nnz / self.total,
            "compression_rate": self.total / max(1, self.nnz),
            "threshold_offset": self.offset,
            "forced": self.forced,
        }


class PEPHook(StepHook):
    """Applies the threshold pressure, counts non-zeros and snapshots masks at each budget.

    After every ``check_every``-th step the surviving values of all tables are counted across ranks; the
    first time the count is at or below ``budget * total`` for a budget, the masks are gathered and
    kept (bit-packed, on every rank); budgets crossed in the same check share them. Training stops
    (``should_stop``) once the smallest budget has its snapshot. Checkpoints hold the snapshots
    (``state_dict``).

    Args:
        provider: the (possibly sharded) threshold provider.
        budgets: target fractions of surviving values, each in (0, 1).
        pressures: what pushes s up (a :class:`LinearRamp` by default).
        check_every: steps between counts (a fixed schedule), when ``schedule`` is not given.
        schedule: when to count (:class:`~recdim.search.count_schedule.CountSchedule`); default a count
            every ``check_every`` steps.
        sampler: estimates the count from a sample of rows (:class:`~recdim.search.sampled_count.SampledCount`):
            a due count is taken exactly only once the estimate is not surely above the next budget; the
            schedule then follows the estimates. None: every due count is exact.

    Example::

        hook = PEPHook(provider, budgets=(0.5, 0.2), pressures=[LinearRamp(0.01)],
                       schedule=CountSchedule(every=1, lookahead=0.5))
        session.trainer.hooks.append(hook)
    """

    def __init__(
        self,
        provider: ThresholdEmbeddingProvider,
        budgets: Sequence[float],
        pressures: Sequence[ThresholdPressure] = (),
        check_every: int = 1,
        schedule: Optional[CountSchedule] = None,
        sampler: Optional[SampledCount] = None,
    ) -> None:
        if not budgets or any(not 0.0 < b < 1.0 for b in budgets):
            raise ValueError(f"budgets must be fractions in (0, 1), got {tuple(budgets)}")
        self.provider = provider
        self.budgets = sorted(set(float(b) for b in budgets), reverse=True)
        self.pending = list(self.budgets)
        self.pressures = list(pressures) if pressures else [LinearRamp(0.01)]
        self.schedule = schedule if schedule is not None else CountSchedule(every=int(check_every), lookahead=0.0)
        self.check_every = self.schedule.every
        self.sampler = sampler
        self.estimates = 0  # due counts answered by the sampled estimate
        self.snapshots: List[Snapshot] = []
        self.last_count: Optional[Tuple[int, int]] = None

    def on_train_start(self, trainer: Any) -> None:
        for p in self.pressures:
            p.attach(self.provider, trainer.global_step)

    def after_step(self, trainer: Any, step: int, batch: Any) -> None:
        for p in self.pressures:
            p.after_step(self.provider, step)
        if not (self.pending and self.schedule.due(step)):
            return
        if self.sampler is not None:
            total = self.provider.embedding_params()
            target = int(self.pending[0] * total)
            far, est, se = self.sampler.far_above(target)  # collective, like the exact count
            if far:
                self.estimates += 1
                self.schedule.observe(step, int(est), target + int(self.sampler.z * se))
                return
        self.check(step)

    def check(self, step: int) -> List[float]:
        """Counts non-zeros (collective) and snapshots every budget newly reached; returns those budgets."""
        nnz, total = self.count(step)
        self.last_count = (nnz, total)
        crossed = [b for b in self.pending if nnz <= b * total]
        for b in crossed:
            self.snapshot(b, step, total)
        if self.pending:
            self.schedule.observe(step, nnz, int(self.pending[0] * total))
        if not self.pending:
            self.provider.track_touched(False)
        return crossed

    def count(self, step: int) -> Tuple[int, int]:
        """``(surviving values, all values)`` after ``step`` (collective), the same as
        :func:`count_nonzeros`: kept up to date from the rows each step touched (:class:`KeptCounter`) when
        the thresholds live in tables trained by a fused sparse optimizer, else counted over every table."""
        counter = self.__dict__.get("_counter")
        if counter is None:
            usable = self.provider.keyed_survival and fused_sparse_tables(self.provider)
            counter = self._counter = KeptCounter(self.provider) if usable else False
        if counter is False:
            return count_nonzeros(self.provider)
        offset = float(self.provider.threshold_offset)
        return counter.count(offset, upcoming_offsets(self.pressures, step, self.check_every, offset))

    def snapshot(self, budget: float, step: int, total: int, forced: bool = False) -> Snapshot:
        """Keeps the masks of ``budget`` at exactly ``round(budget * total)`` surviving values (up to ties):
        the smallest extra offset on every threshold that brings the count there, found by bisection on the
        current values (collective counts), is applied for the snapshot only; training goes on at the ramp's
        own offset. ``forced``: the budget was not reached by training (see :meth:`reach_pending`).

        Raises:
            ValueError: when no offset reaches the budget (too many values at or above the gate's largest
                threshold).
        """
        target = int(round(budget * total))
        ramp = float(self.provider.threshold_offset)
        counter = self.__dict__.get("_counter")
        # kept keys answer every offset of the bisection with one comparison per value (exactly the full
        # count); otherwise the keys are computed once for the bisection when they fit, else every probe
        # counts through the gate
        count_at: Callable[[float], int]
        if counter and counter.answers_any_offset():
            count_at = self._counter.count_at
        else:
            frozen = FrozenKeys.build(self.provider) if self.provider.keyed_survival else None
            count_at = frozen.count_at if frozen is not None else self._full_count_at
        counts: Dict[float, int] = {}

        def nnz_at(offset: float) -> int:
            """The count at ``offset`` as the float32 buffer holds it (bisection midpoints that round to
            the same float32 offset are counted once)."""
            self.provider.threshold_offset.fill_(offset)
            held = float(self.provider.threshold_offset)
            if held not in counts:
                counts[held] = count_at(held)
            return counts[held]

        lo, hi = ramp - 64.0, ramp
        while nnz_at(hi) > target:
            if hi - ramp > 1e4:
                self.provider.threshold_offset.fill_(ramp)
                raise ValueError(
                    f"PEP budget {budget:g} cannot be reached: more than {target:,} of {total:,} values stay above "
                    "the gate's largest threshold"
                )
            lo, hi = hi, hi + 2.0 * (hi - lo)
        if nnz_at(lo) <= target:
            hi = lo  # the budget holds even with (almost) no threshold: the rest are exact zeros
        while hi - lo > 1e-12 * max(1.0, abs(hi)):
            mid = 0.5 * (lo + hi)
            if nnz_at(mid) > target:
                lo = mid
            else:
                hi = mid
        nnz = nnz_at(hi)
        masks = gather_masks(self.provider)
        self.provider.threshold_offset.fill_(ramp)
        packed = [None if masks is None else {k: np.packbits(v.numpy(), axis=1) for k, v in masks.items()}]
        if rank_and_world()[1] > 1:
            dist.broadcast_object_list(packed, src=0)
        snap = Snapshot(budget, step, nnz, total, hi, packed[0], forced)
        self.snapshots.append(snap)
        self.pending.remove(budget)
        return snap

    def _full_count_at(self, offset: float) -> int:
        """A full count at ``offset``, the offset the provider holds (collective)."""
        return count_nonzeros(self.provider)[0]

    def reach_pending(self, step: int) -> List[Snapshot]:
        """Snapshots every budget training did not reach, by raising the offset on the final values (no
        further training); each is marked ``forced``. Collective. Returns the new snapshots."""
        if not self.pending:
            return []
        _, total = self.count(step)  # also brings the kept keys up to date for the snapshots
        out = []
        for b in list(self.pending):
            log.warning("PEP search ended before budget %g; raising every threshold to reach it", b)
            out.append(self.snapshot(b, step, total, forced=True))
        return out

    def should_stop(self, trainer: Any) -> bool:
        return not self.pending

    def write(self, out_dir: Path) -> List[Dict[str, Any]]:
        """Writes ``masks_keep<budget>.safetensors`` (bool [N, K] per table) for each snapshot (rank 0)
        and returns the index entries."""
        entries = []
        for snap in self.snapshots:
            entry = dict(snap.summary(), file=f"masks_keep{snap.budget:g}.safetensors")
            masks = snap.masks(self.provider.embedding_dim)
            meta = {"budget": str(snap.budget), "step": str(snap.step), "nnz": str(snap.nnz)}
            save_file({k: v.contiguous() for k, v in masks.items()}, str(Path(out_dir) / entry["file"]), metadata=meta)
            entries.append(entry)
        return entries

    def state_dict(self) -> Dict[str, Any]:
        """Budgets reached so far and their masks, for training checkpoints (one opaque, replicated
        entry; the thresholds and the ramp offset live in the model's state)."""
        buf = io.BytesIO()
        snaps = [
            dict(dataclasses.asdict(s), packed={k: torch.from_numpy(v) for k, v in s.packed.items()})
            for s in self.snapshots
        ]
        state = {"pending": self.pending, "last_count": self.last_count, "snapshots": snaps}
        torch.save(dict(state, schedule=self.schedule.state_dict()), buf)
        return {"pep": buf.getvalue()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        data = torch.load(io.BytesIO(state["pep"]), weights_only=True)
        self.pending = [float(b) for b in data["pending"]]
        if "schedule" in data:  # checkpoints from before the schedule counted every check_every steps
            self.schedule.load_state_dict(data["schedule"])
        self.last_count = tuple(data["last_count"]) if data["last_count"] is not None else None  # type: ignore[assignment]
        self.snapshots = [
            Snapshot(**dict(s, packed={k: v.numpy() for k, v in s["packed"].items()})) for s in data["snapshots"]
        ]

    def state(self) -> Dict[str, Any]:
        nnz, total = self.last_count or (None, None)
        return {
            "pep": {
                "nnz": nnz,
                "total": total,
                "threshold_offset": float(self.provider.threshold_offset),
                "snapshots": [s.summary() for s in self.snapshots],
                "pending_budgets": list(self.pending),
            }
        }


def upcoming_offsets(
    pressures: Sequence[ThresholdPressure], step: int, every: int, offset: float
) -> Optional[Callable[[int], List[float]]]:
    """``n -> the threshold offsets (float32 values) of the next n checks`` after ``step``, every ``every``
    steps, when the pressures make them known: constant (``offset``) when none moves the offset, the last
    :class:`LinearRamp`'s schedule when only ramps do; ``None`` otherwise.

    Example::

        upcoming_offsets([LinearRamp(0.25)], step=4, every=2, offset=1.0)(3)   # [1.5, 2.0, 2.5]
    """
    movers = [p for p in pressures if type(p).after_step is not ThresholdPressure.after_step]
    if not movers:
        return lambda n: [offset] * n
    if not all(isinstance(p, LinearRamp) for p in movers):
        return None
    ramp = movers[-1]

    def ahead(n: int) -> List[float]:
        steps = step + every * np.arange(1, n + 1, dtype=np.int64)
        return (ramp.rate * np.maximum(0, steps - ramp.start)).astype(np.float32).astype(np.float64).tolist()

    return ahead


def build_threshold_provider(
    pep: PEPConfig,
    model: ModelConfig,
    num_embeddings: Dict[str, int],
    weighted: bool,
    device: torch.device,
    single_valued: Collection[str] = (),
) -> ThresholdEmbeddingProvider:
    """The PEP provider for a config (tables on ``device``, dense thresholds on the default device).

    Args:
        pep: PEP settings (granularity, gate, initial s).
        model: K and the pooling.
        num_embeddings: rows per feature, in output order.
        weighted: the batches carry per-value weights.
        device: where tables are allocated.
        single_valued: features with exactly one id per bag: looked up pooled (EmbeddingBagCollection)
            and thresholded after the lookup, the fast exact path; the others per id
            (EmbeddingCollection). See :func:`single_valued_features`.

    Example::

        provider = build_threshold_provider(PEPConfig(), cfg.model, {"user": 944, "genres": 19}, False,
                                            torch.device("meta"), single_valued=["user"])
    """
    thresholds = make_thresholds(pep.granularity, list(num_embeddings), model.embedding_dim, pep.threshold_init)
    return ThresholdEmbeddingProvider(
        num_embeddings, model.embedding_dim, thresholds, GATES[pep.gate], model.pooling, weighted, device, single_valued
    )


def single_valued_features(dataset: Optional[PreparedDataset], features: Sequence[str]) -> List[str]:
    """The features the dataset schema declares single-valued (``CATEGORICAL`` and ``WEIGHTED`` fields hold
    exactly one id per row; ``MULTI_CATEGORICAL`` ones are bags). Without a dataset, none (every feature
    takes the per-id path, exact for any input)."""
    if dataset is None:
        return []
    return [f for f in features if dataset.schema[f].kind in SINGLE_VALUED_KINDS]


def pep_section(cfg: Config) -> PEPConfig:
    """``cfg.search.pep`` when the config has one, else the defaults."""
    search = getattr(cfg, "search", None)
    section = getattr(search, "pep", None)
    return section if isinstance(section, PEPConfig) else PEPConfig()


class PEPMethod(SearchMethod):
    """PEP (learnable soft thresholds) as a search method.

    Args:
        cfg: the experiment config.
        pep: PEP settings (default ``cfg.search.pep``).

    Example::

        method = PEPMethod(cfg)
        session = open_session(cfg, method.provider_factory(ds, features), method.hooks)
        train_and_evaluate(session, out)
        method.save(session, out)       # thresholds.safetensors, masks_keep*.safetensors, snapshots.json
    """

    name = "pep"

    def __init__(self, cfg: Config, pep: Optional[PEPConfig] = None) -> None:
        super().__init__(cfg)
        self.pep = pep if pep is not None else pep_section(cfg)
        self.budgets = search_budgets(self.pep, cfg.prune.crs)
        self.hook: Optional[PEPHook] = None

    def at_budget(self, cr: float) -> Config:
        """The search stops at the one budget ``1 / cr`` (kept fraction; below 1 so that pruning starts)."""
        return with_search(self.cfg, pep=dataclasses.replace(self.pep, budgets=(min(0.999, 1.0 / cr),)))

    def provider_factory(self, dataset: PreparedDataset, features: Sequence[str]) -> ProviderFactory:
        single = single_valued_features(dataset, features)

        def factory(
            model: ModelConfig, num_embeddings: Dict[str, int], weighted: bool, device: torch.device
        ) -> ThresholdEmbeddingProvider:
            return build_threshold_provider(
                self.pep, model, num_embeddings, weighted, device, [f for f in single if f in num_embeddings]
            )

        return factory

    def hooks(self, session: Any) -> List[StepHook]:
        provider = session.model.provider
        if not isinstance(provider, ThresholdEmbeddingProvider):
            raise TypeError(f"PEP needs a ThresholdEmbeddingProvider, got {type(provider).__name__}")
        init_threshold_tables(provider)  # after init_tables (open_session), before any evaluation
        train = session.cfg.train
        planned = train.epochs * len(session.train_loader)
        planned = min(planned, train.max_steps) if train.max_steps else planned
        if train.patience:
            # Pruning lowers validation quality by design; early stopping would end the search before the
            # budgets are reached. The run ends at the last budget (or after train.epochs) instead.
            log.warning("PEP search: train.patience = %d ignored (training runs to the last budget)", train.patience)
            session.trainer.cfg = dataclasses.replace(train, patience=0)
        schedule = CountSchedule(self.pep.check_every, self.pep.check_lookahead, self.pep.max_check_gap)
        sampler = None
        if self.pep.count_sample > 0 and provider.embedding_params() >= self.pep.count_sample_above:
            sampler = SampledCount(provider, self.pep.count_sample, seed=train.seed)
        self.hook = PEPHook(provider, self.budgets, pressures(self.pep, planned), schedule=schedule, sampler=sampler)
        return [self.hook]

    def save(self, session: Any, out_dir: Path) -> Dict[str, Any]:
        provider = session.model.provider
        if self.hook is not None:
            self.hook.reach_pending(session.trainer.global_step)  # collective
        thresholds = gather_thresholds(provider)  # collective: every rank calls it
        snapshots = self.hook.snapshots if self.hook is not None else []
        summary: Dict[str, Any] = {
            "method": self.name,
            "granularity": self.pep.granularity,
            "gate": self.pep.gate,
            "threshold_init": self.pep.threshold_init,
            "pressure": self.pep.pressure,
            "total": provider.embedding_params(),
            "features": provider.feature_names,
            "init": {"seed": self.cfg.train.seed, "std": self.cfg.train.init_std},
            "tables": {t.name: [t.num_embeddings, provider.embedding_dim] for t in provider.tables},
            "snapshots": [s.summary() for s in snapshots],
        }
        if thresholds is not None:  # rank 0
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            if self.hook is not None:
                summary["snapshots"] = self.hook.write(out)
            save_file({k: v.contiguous() for k, v in thresholds.items()}, str(out / "thresholds.safetensors"))
            (out / "snapshots.json").write_text(json.dumps(summary, indent=2))
        return summary

    def derive(self, searched: SearchedModel, prune: PruneConfig) -> List[PrunedModel]:
        """One pruned model per ``prune.crs``, from the snapshot of budget ``1 / cr`` (``snapshots.json``).
        Retraining starts from the initial values under the mask (the lottery ticket) by default, from the
        searched values ``S(V, s)`` and arch with ``prune.init == "inherit"``, or fresh.

        Raises:
            ValueError: naming a CR whose budget the search did not have, or whose snapshot misses it.
        """
        if prune.score != "magnitude":
            raise ValueError(
                f"{self.name} derives its masks from its thresholds; prune.score = {prune.score!r} applies to "
                "DNIS / AutoSrh and magnitude pruning only"
            )
        if field_allocation(prune, "global"):
            return self._field_allocated(searched, prune)
        path = searched.search_dir / "snapshots.json"
        snaps = json.loads(path.read_text()).get("snapshots", [])
        by_budget = {round(float(s["budget"]), 9): s for s in snaps}
        out = []
        for cr in prune.crs:
            snap = by_budget.get(round(min(0.999, 1.0 / cr), 9))
            if snap is None:
                have = ", ".join(f"{b:g} (CR {1 / b:.4g})" for b in sorted(by_budget, reverse=True)) or "none"
                raise ValueError(
                    f"{path}: CR {cr:g} needs PEP budget {1 / cr:g}; the search kept budgets: {have}. "
                    "Search again with that budget (search.pep.budgets, or leave it empty to follow prune.crs)"
                )
            saved = load_file(str(searched.search_dir / snap["file"]))
            masks = {f: saved[table_name(f)] for f in searched.features}
            met = mask_stats(masks)["cr"]
            check_met_cr(cr, met, f"{self.name} ({path})")
            values, arch, rule = self._retrain_start(searched, prune)
            info = {"cr": cr, "budget": snap["budget"], "step": snap["step"], "forced": snap.get("forced", False)}
            out.append(PrunedModel(self.name, met, masks, values, arch, {**info, "init": rule}, target=cr))
        return out

    def _retrain_start(
        self, searched: SearchedModel, prune: PruneConfig
    ) -> Tuple[Optional[Dict[str, torch.Tensor]], Optional[Dict[str, torch.Tensor]], str]:
        """``(values, arch state, rule)`` retraining starts from under ``prune.init``."""
        if prune.init == "inherit":
            return (
                searched.provider.effective_weights(searched.tables),
                searched.arch_state,
                "searched values S(V, s)",
            )
        if prune.init == "fresh":
            return None, None, "fresh"
        values = initial_values(searched.cfg, searched.provider, searched.features)
        return values, None, "lottery ticket: initial values"

    def _field_allocated(self, searched: SearchedModel, prune: PruneConfig) -> List[PrunedModel]:
        """``prune.allocation = "field"``: each field keeps the share of the budget its held-out importance
        earns (:func:`~recdim.layout.field_budget.field_kept_counts`, importance of the searched ``S(V, s)``
        over the search split), and within the field the values whose survival keys ``g^{-1}(|V|) - s`` are
        largest (those a rising threshold would prune last), from the searched state at the end of the run."""
        provider = searched.provider
        eff = provider.effective_weights(searched.tables)
        importance = search_split_field_importance(searched, eff, prune.field_confidence)
        keys = {}
        for i, f in enumerate(searched.features):
            full = searched.tables[table_name(f)]
            v, s, _ = provider.thresholds.split_piece(i, full, (0, full.size(1)))
            keys[f] = survival_keys(v, s.to(v.dtype), provider.gate)
        rows = {f: k.size(0) for f, k in keys.items()}
        total = sum(k.numel() for k in keys.values())
        K = searched.cfg.model.embedding_dim
        values, arch, rule = self._retrain_start(searched, prune)
        out = []
        for cr in prune.crs:
            counts = field_kept_counts(importance, rows, K, kept_for_cr(total, cr))
            masks = field_top_masks(keys, counts)
            met = mask_stats(masks)["cr"]
            check_met_cr(cr, met, self.name)
            info = {"cr": cr, "allocation": "field", "field_importance": importance, "init": rule}
            out.append(PrunedModel(self.name, met, masks, values, arch, info, target=cr))
        return out


def search_budgets(pep: PEPConfig, crs: Sequence[float]) -> Tuple[float, ...]:
    """The kept fractions the search snapshots: ``pep.budgets``, or ``1 / cr`` for each of ``crs``.

    Example::

        search_budgets(PEPConfig(), (2.0, 4.0))   # (0.5, 0.25)
    """
    budgets = tuple(pep.budgets) or tuple(min(0.999, 1.0 / c) for c in crs)
    if not budgets:
        raise ValueError("PEP needs budgets: set search.pep.budgets or prune.crs")
    return budgets


def initial_values(
    cfg: Config, provider: ThresholdEmbeddingProvider, features: Sequence[str]
) -> Dict[str, torch.Tensor]:
    """PEP's tables as initialised (before any step): the values V, thresholds split off.

    Each table's values are regenerated from the seed and its state-dict key in the model, which depends on
    the table's lookup path (``provider.ebc.embedding_bags.<t>.weight`` for single-valued features,
    ``provider.ec.embeddings.<t>.weight`` for bags; :meth:`ThresholdEmbeddingProvider.table_key`).
    """
    out = {}
    for i, f in enumerate(features):
        t = next(t for t in provider.tables if t.name == table_name(f))
        key = f"provider.{provider.table_key(t.name)}"
        full = table_rows(
            cfg.train.seed, key, (0, t.num_embeddings), (0, t.embedding_dim), t.embedding_dim, cfg.train.init_std
        )
        values, _, _ = provider.thresholds.split_piece(i, full, (0, full.size(1)))
        out[f] = values
    return out
