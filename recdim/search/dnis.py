"""DNIS / AutoSrh: soft selection of embedding dimensions per frequency block, learned by bi-level
optimisation on held-out batches.

The papers step alpha on their validation data. recdim holds those batches out of train instead: the
``search`` split (:mod:`recdim.data.search_split`, ``search.split``), so that the validation split that picks
the epoch and the model never trains alpha. Below, L_val is the loss on a search-split batch.

Training steps update Θ (tables by the fused optimizer, dense parts by Adam) on training batches; every f
steps an architecture step updates alpha with Adam (lr 0.01) on a search-split batch (at most
``DNISConfig.val_batch_size`` rows, 1024 by default): the alpha gradient is
normalised per block row, ``g / (mean|g| + 1e-7)`` (DNIS eq. 8 / AutoSrh eq. 14), an optional L1 term is
added, and alpha is clipped to [0, 1] after the step.

The gradient is first-order by default (∇_α L_val with Θ fixed); alpha requires grad only inside these
architecture passes (:func:`~recdim.search.bilevel.exclude_from_training`), so training steps never compute
its gradient. The single-level option (``DNISConfig.single_level``) skips the held-out pass and steps alpha
on ∇_α L_train, the gradient the training step's own backward computes. The second-order option uses the unrolled
gradient (DNIS eq. 7 / AutoSrh eq. 13, as in DARTS)::

    ∇_α L_val(Θ', α) − ∇²_{α,Θ} L_train(Θ, α) · Ξ ∇_{Θ'} L_val(Θ', α),     Θ' = Θ − Ξ ∇_Θ L_train(Θ, α)

with Ξ the per-parameter learning rates and the Hessian-vector product by central finite differences.
**Where it applies:** Θ is every trainable parameter that is not updated inside backward and is not an
architecture parameter, i.e. the dense parameters (arch MLPs, biases) with Ξ = ``train.lr``, plus the
tables only when they are materialised, i.e. on the dense (data-parallel) kernel with Ξ = ``train.embedding_lr``.
Tables under the fused optimizer (the usual case) never expose a gradient, so they are frozen in all four
passes (:meth:`EmbeddingProvider.frozen_tables`) and held at their current values: for them the unrolled
term is zero and the gradient is first-order.

AutoSrh (the journal version of DNIS) runs the same search; recdim registers it under both names with the
same defaults. The one difference the code reflects is AutoSrh's numerical fields, embedded as value ×
field embedding (its eq. 3; recdim's ``prepare.numerical = "weighted"``): such a field has the single id 0,
so it is a single-valued feature whose alpha row is that of its block (the most frequent one under global
blocking). Multi-valued fields use ``DNISConfig.bag_path``.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recdim.config import Config, ModelConfig, PruneConfig
from recdim.config.dnis import DNISConfig
from recdim.config.search_split import SearchSplitConfig
from recdim.data.loader import TrainLoader
from recdim.data.prepared import PreparedDataset
from recdim.data.schema import FieldKind
from recdim.layout.blocks import BlockPlan, make_block_plan
from recdim.layout.pruned import PrunedModel, magnitude_pruned
from recdim.modules.soft_selection import BlockSplitPooling, SequenceScaling, SoftSelectionProvider
from recdim.modules.table_init import TABLE_PARAM
from recdim.search.bilevel import (
    BilevelConfig,
    BilevelHook,
    arch_batch_size,
    exclude_from_training,
    requires_grad_scope,
    search_rows,
)
from recdim.search.field_importance import field_allocation, search_split_field_importance
from recdim.search.importance import search_split_scores
from recdim.search.method import SearchedModel, SearchMethod
from recdim.train.build import ProviderFactory

NORM_EPS = 1e-7


def rowwise_normalize(grad: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Each row (one block's K weights) divided by its mean absolute value: ``g / (mean|g| + eps)``.

    Args:
        grad: [R, K] alpha gradient.

    Returns:
        Tensor: [R, K]; every non-zero row has mean |g| ≈ 1, so frequent and rare blocks move alike.
    """
    return grad / (grad.abs().mean(dim=-1, keepdim=True) + eps)


class DNISGradTransform:
    """Rewrites alpha gradients in place: row-wise normalisation, then ``+ l1 * sign(alpha)``.

    Args:
        l1: L1 strength, in units of the normalised gradient (0 disables it).

    Example::

        DNISGradTransform(l1=0.1)([provider.alpha])
    """

    def __init__(self, l1: float = 0.0) -> None:
        self.l1 = float(l1)

    def __call__(self, params: List[nn.Parameter]) -> None:
        for p in params:
            if p.grad is None:
                continue
            g = rowwise_normalize(p.grad)
            if self.l1:
                g = g + self.l1 * torch.sign(p.detach())
            p.grad.copy_(g)


def clip_unit(params: Sequence[nn.Parameter]) -> None:
    """Clamps every parameter to [0, 1] in place."""
    with torch.no_grad():
        for p in params:
            p.clamp_(0.0, 1.0)


def _grads_of(params: Sequence[torch.Tensor], closure: Callable[[], torch.Tensor]) -> List[Optional[torch.Tensor]]:
    """Gradients of ``closure()`` w.r.t. ``params`` via ``backward`` (so DDP averages them), ``.grad`` left clear."""
    for p in params:
        p.grad = None
    closure().backward()
    out = [None if p.grad is None else p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None
    return out


def unrolled_arch_grad(
    arch: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    train_loss: Callable[[], torch.Tensor],
    val_loss: Callable[[], torch.Tensor],
    xi: Union[float, Sequence[float]],
    fd_epsilon: float = 0.01,
) -> List[torch.Tensor]:
    """Second-order (unrolled one-step) architecture gradient with a finite-difference Hessian product.

    Computes ``∇_α L_val(Θ', α) − (∇_α L_train(Θ + εu, α) − ∇_α L_train(Θ − εu, α)) / 2ε`` with
    ``Θ' = Θ − Ξ ∇_Θ L_train(Θ, α)``, ``u = Ξ ∇_{Θ'} L_val(Θ', α)`` and ``ε = fd_epsilon / ||u||``. Four
    forward/backward passes; ``weights`` are restored to their values on entry. Works on any module: the
    closures rebuild the loss from the current parameter values (gradients are taken by ``backward``, so
    a DDP-wrapped model averages them over ranks).

    Args:
        arch: architecture parameters α.
        weights: Θ, the parameters the inner step updates.
        train_loss: closure returning L_train at the current parameters (one fixed training batch).
        val_loss: closure returning L_val at the current parameters (one fixed search-split batch).
        xi: the inner step's learning rate, one float or one per weight (Ξ).
        fd_epsilon: size of the finite-difference perturbation.

    Returns:
        One gradient per architecture parameter (zeros where it does not affect the loss).

    Example::

        g = unrolled_arch_grad(
            [alpha], list(net.parameters()), lambda: loss(net, xt, yt), lambda: loss(net, xv, yv), 0.1
        )
    """
    arch, weights = list(arch), list(weights)
    xis = [float(xi)] * len(weights) if isinstance(xi, (int, float)) else [float(x) for x in xi]
    if len(xis) != len(weights):
        raise ValueError(f"{len(xis)} learning rates for {len(weights)} weights")
    params = arch + weights
    n = len(arch)

    def grads(closure: Callable[[], torch.Tensor]) -> List[torch.Tensor]:
        gs = _grads_of(params, closure)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]

    with torch.no_grad():
        backup = [w.detach().clone() for w in weights]
    try:
        g_train = grads(train_loss)[n:]
        with torch.no_grad():
            for w, g, x in zip(weights, g_train, xis):
                w.sub_(x * g)
        gv = grads(val_loss)
        a_val, v = gv[:n], gv[n:]
        u = [x * vi for x, vi in zip(xis, v)]
        norm = math.sqrt(sum(float(ui.double().pow(2).sum()) for ui in u))
        if norm == 0.0:
            return a_val
        eps = fd_epsilon / norm
        with torch.no_grad():
            for w, b, ui in zip(weights, backup, u):
                w.copy_(b + eps * ui)
        a_plus = grads(train_loss)[:n]
        with torch.no_grad():
            for w, b, ui in zip(weights, backup, u):
                w.copy_(b - eps * ui)
        a_minus = grads(train_loss)[:n]
        return [av - (ap - am) / (2 * eps) for av, ap, am in zip(a_val, a_plus, a_minus)]
    finally:
        with torch.no_grad():
            for w, b in zip(weights, backup):
                w.copy_(b)


class DNISHook(BilevelHook):
    """First-order DNIS architecture steps: Adam on alpha with row-wise normalised gradients (+ L1),
    clipped to [0, 1], every ``update_every`` steps after ``warm_start_epochs``.

    Args:
        provider: the soft-selection provider.
        val_batches: loader over the search split (cycled).
        cfg: DNIS settings.

    Example::

        session.trainer.hooks.append(DNISHook(provider, val_loader, DNISConfig()))
    """

    def __init__(self, provider: SoftSelectionProvider, val_batches: Optional[TrainLoader], cfg: DNISConfig) -> None:
        bilevel = BilevelConfig(
            arch_lr=cfg.arch_lr, update_every=cfg.update_every, warm_start_epochs=cfg.warm_start_epochs
        )
        super().__init__(provider, val_batches, bilevel, DNISGradTransform(cfg.l1), self._clip)
        self.dnis = cfg

    def _clip(self) -> None:
        clip_unit(self.params)

    def state(self) -> Dict[str, Any]:
        alpha = self.provider.alpha.detach()
        return {
            "arch_steps": self.arch_steps,
            "alpha_mean": float(alpha.mean()),
            "alpha_zero_fraction": float((alpha == 0).float().mean()),
        }


class SingleLevelDNISHook(DNISHook):
    """First-order single-level DNIS: each alpha step uses ∇_α L_train of the batch just trained on, the
    gradient the training step's backward left in ``alpha.grad`` (averaged over ranks by DDP), with no
    validation pass; then the same row-wise normalisation, L1, Adam and clipping as :class:`DNISHook`.

    alpha must require grad in training steps (the provider built without
    :func:`~recdim.search.bilevel.exclude_from_training`), so with ``update_every`` > 1 its gradient is also
    computed, and dropped, on the steps in between (DDP's static graph needs the same parameters to take a
    gradient every step).

    Args:
        provider: the soft-selection provider.
        cfg: DNIS settings.

    Example::

        session.trainer.hooks.append(SingleLevelDNISHook(provider, DNISConfig(single_level=True)))
    """

    def __init__(self, provider: SoftSelectionProvider, cfg: DNISConfig) -> None:
        super().__init__(provider, None, cfg)
        if not all(p.requires_grad for p in self.params):
            raise ValueError("single-level DNIS needs alpha to require grad in training steps")

    def after_step(self, trainer: Any, step: int, batch: Batch) -> None:
        if self.due(trainer, step) and all(p.grad is not None for p in self.params):
            self.arch_step()
        self.optimizer.zero_grad()  # the next training backward writes a fresh gradient


class UnrolledArchGradient:
    """The second-order (unrolled DARTS) architecture gradient of a :class:`BilevelHook`: :func:`unrolled_arch_grad`
    on the training batch just trained on and one search-split batch.

    Θ: the trainable parameters outside the fused optimizer and outside the architecture parameters;
    Ξ: ``embedding_lr`` for materialised tables, ``lr`` for the rest. Tables under the fused optimizer are
    frozen in every pass, so for them the gradient is first order. Mixed in before the hook class; the hook
    sets ``lr``, ``embedding_lr`` and ``fd_epsilon``, and may override :meth:`noise_scope`.

    Example::

        class UnrolledDNISHook(UnrolledArchGradient, DNISHook): ...
    """

    lr: float
    embedding_lr: float
    fd_epsilon: float
    _train_batch: Optional[Batch] = None

    def noise_scope(self) -> ContextManager[Any]:
        """Held over every pass of one gradient (e.g. one Gumbel draw); none by default."""
        return contextlib.nullcontext()

    def after_step(self, trainer: Any, step: int, batch: Batch) -> None:
        self._train_batch = batch
        super().after_step(trainer, step, batch)  # type: ignore[misc]

    def arch_gradient(self, trainer: Any, batch: Batch) -> None:
        params: List[nn.Parameter] = self.params  # type: ignore[attr-defined]
        provider = self.provider  # type: ignore[attr-defined]
        arch_ids = {id(p) for p in params}
        named = in_backward_optimizer_filter(trainer.model.named_parameters(), include=False)
        named = [(k, p) for k, p in named if p.requires_grad and id(p) not in arch_ids]
        fused = any(True for _ in in_backward_optimizer_filter(provider.named_parameters(), include=True))
        freeze = provider.frozen_tables if fused else contextlib.nullcontext
        train_batch = self._train_batch if self._train_batch is not None else batch

        def loss_on(b: Batch) -> Callable[[], torch.Tensor]:
            def closure() -> torch.Tensor:
                with freeze():
                    return trainer.loss(b)

            return closure

        xi = [self.embedding_lr if TABLE_PARAM.search(k) else self.lr for k, _ in named]
        with requires_grad_scope(params), self.noise_scope():
            grads = unrolled_arch_grad(
                params, [p for _, p in named], loss_on(train_batch), loss_on(batch), xi, self.fd_epsilon
            )
        for p, g in zip(params, grads):
            p.grad = g


class UnrolledDNISHook(UnrolledArchGradient, DNISHook):
    """DNIS with the second-order alpha gradient (:class:`UnrolledArchGradient`) on the batch just trained on.

    Args:
        provider: the soft-selection provider.
        val_batches: loader over the search split (cycled).
        cfg: DNIS settings (``fd_epsilon``).
        lr: the dense learning rate (``train.lr``).
        embedding_lr: the table learning rate (``train.embedding_lr``).
    """

    def __init__(
        self, provider: SoftSelectionProvider, val_batches: TrainLoader, cfg: DNISConfig, lr: float, embedding_lr: float
    ) -> None:
        super().__init__(provider, val_batches, cfg)
        self.lr, self.embedding_lr, self.fd_epsilon = lr, embedding_lr, cfg.fd_epsilon
        self._train_batch = None


def block_occurrences(plan: BlockPlan, counts: Mapping[str, np.ndarray]) -> Dict[str, List[int]]:
    """Train occurrences per (feature, block): the sum of the counts of the block's ids ([L] per feature)."""
    out: Dict[str, List[int]] = {}
    for f, bounds in zip(plan.features, plan.boundaries):
        cum = np.concatenate([[0], np.cumsum(np.asarray(counts[f], dtype=np.int64))])
        out[f] = [int(cum[hi] - cum[lo]) for lo, hi in zip(bounds, bounds[1:])]
    return out


def alpha_summary(
    provider: SoftSelectionProvider, occurrences: Optional[Mapping[str, Sequence[int]]] = None
) -> Dict[str, Any]:
    """JSON-ready alpha statistics: per alpha row and per field / per block.

    Per field: ``block_mean`` (mean alpha of each block's row), ``field_mean`` (mean alpha over the field's
    ids, blocks weighted by id counts) and, given ``occurrences``, ``field_mean_by_count`` (the mean alpha
    a train occurrence of the field meets, blocks weighted by occurrences). The latter is the per-field
    importance score: a block's alpha moves only as far as its ids appear in validation batches, so the
    rare tail's alpha is mostly noise around its start value, and weighting by occurrences follows the
    alpha the model actually applies. Under global blocking the blocks are shared by all fields, so these
    means reflect only how a field's ids spread over the blocks; a per-field importance needs
    ``per_table`` blocking.

    Args:
        provider: the soft-selection provider.
        occurrences: per feature, train occurrences per block (:func:`block_occurrences`).
    """
    plan: BlockPlan = provider.plan
    alpha = provider.alpha.detach().float().cpu()
    row_mean = alpha.mean(dim=1)
    fields: Dict[str, Any] = {}
    for f in plan.features:
        off = plan.alpha_row_offset(f)
        sizes = plan.block_sizes(f)
        means = [float(row_mean[off + b]) for b in range(plan.num_blocks)]
        entry: Dict[str, Any] = {"block_sizes": sizes, "block_mean": means, "field_mean": _weighted(means, sizes)}
        if occurrences is not None:
            entry["block_occurrences"] = list(occurrences[f])
            entry["field_mean_by_count"] = _weighted(means, occurrences[f])
        fields[f] = entry
    return {
        "scheme": plan.scheme,
        "num_blocks": plan.num_blocks,
        "row_mean": row_mean.tolist(),
        "zero_fraction": float((alpha == 0).float().mean()),
        "fields": fields,
    }


def _weighted(values: Sequence[float], weights: Sequence[int]) -> float:
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights)) / total if total else 0.0


def block_counts(dataset: PreparedDataset, features: Sequence[str]) -> Dict[str, np.ndarray]:
    """Train counts per feature; a field without a counts file (a weighted numerical field: id 0 in every
    row) counts every train row."""
    out: Dict[str, np.ndarray] = {}
    for f in features:
        try:
            out[f] = dataset.counts(f)
        except FileNotFoundError:
            out[f] = np.full(dataset.schema[f].num_embeddings, dataset.split_rows("train"), np.int64)
    return out


class DNISMethod(SearchMethod):
    """DNIS (AutoSrh): soft-selection provider, bi-level alpha steps, alpha + block plan as artifacts.

    Args:
        cfg: the experiment config.
        dnis: the method's settings; default ``cfg.search.dnis``.

    Example::

        results = run_search(cfg, Path("runs/dnis"), method="dnis")   # recdim.search.run
        results["search"]["fields"]["C1"]["field_mean_by_count"]
    """

    name = "dnis"
    budget_free = True

    def __init__(self, cfg: Config, dnis: Optional[DNISConfig] = None) -> None:
        super().__init__(cfg)
        self.dnis = dnis if dnis is not None else cfg.search.dnis
        self.plan: Optional[BlockPlan] = None
        self.occurrences: Optional[Dict[str, List[int]]] = None
        self.hook: Optional[DNISHook] = None

    def provider_factory(self, dataset: PreparedDataset, features: Sequence[str]) -> ProviderFactory:
        counts = block_counts(dataset, features)
        plan = make_block_plan(self.dnis.blocking, counts, self.dnis.num_blocks)
        bag_path = BlockSplitPooling if self.dnis.bag_path == "split" else SequenceScaling
        paths = {f: bag_path() for f in features if dataset.schema[f].kind == FieldKind.MULTI_CATEGORICAL}
        self.plan, self.occurrences = plan, block_occurrences(plan, counts)

        single_level = self.dnis.single_level

        def factory(
            cfg: ModelConfig, num_embeddings: Dict[str, int], weighted: bool, device: torch.device
        ) -> SoftSelectionProvider:
            provider = SoftSelectionProvider(
                num_embeddings, cfg.embedding_dim, plan, paths, cfg.pooling, weighted, device
            )
            if not single_level:  # alpha's gradient comes from the hook's architecture passes only
                exclude_from_training(provider)
            return provider

        return factory

    def search_split(self) -> Optional[SearchSplitConfig]:
        """The bi-level search holds the ``search`` split out of train; single-level DNIS needs none."""
        return None if self.dnis.single_level else self.cfg.search.split

    def hooks(self, session: Any) -> List[DNISHook]:
        provider = session.model.provider
        if self.dnis.single_level:
            self.hook = SingleLevelDNISHook(provider, self.dnis)
            return [self.hook]
        val, ctx, train = search_rows(session), session.ctx, session.cfg.train
        batch = arch_batch_size(train.batch_size, self.dnis.val_batch_size, len(val), ctx.world_size)
        loader = TrainLoader(
            val, session.features, batch, ctx.rank, ctx.world_size, train.seed + 1, session.dataset.schema.is_weighted
        )
        if self.dnis.second_order:
            self.hook = UnrolledDNISHook(provider, loader, self.dnis, train.lr, train.embedding_lr)
        else:
            self.hook = DNISHook(provider, loader, self.dnis)
        return [self.hook]

    def save(self, session: Any, out_dir: Path) -> Dict[str, Any]:
        """Writes ``dnis_alpha.safetensors`` (alpha [R, K]) and ``dnis_blocks.json`` (the block plan) on
        rank 0; returns the alpha summary (every rank holds the same alpha)."""
        provider: SoftSelectionProvider = session.model.provider
        summary = {"method": self.name, "config": asdict(self.dnis), **alpha_summary(provider, self.occurrences)}
        if session.ctx.is_main:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            save_file(
                {"alpha": provider.alpha.detach().float().cpu().contiguous()}, str(out / "dnis_alpha.safetensors")
            )
            (out / "dnis_blocks.json").write_text(json.dumps(provider.plan.to_json(), indent=1))
            summary["files"] = ["dnis_alpha.safetensors", "dnis_blocks.json"]
        return summary

    def derive(self, searched: SearchedModel, prune: PruneConfig) -> List[PrunedModel]:
        """Masks of the effective weights ``e ⊙ alpha`` ranked by magnitude (or, with ``prune.score =
        "fisher"``, by their held-out importance), one per ``prune.crs`` (or one at ``prune.eps``), each
        field holding the share of the budget its held-out importance earns (``prune.allocation``, by
        default ``field``: :mod:`recdim.layout.field_budget`);
        retraining starts from the searched values with alpha folded in and the searched arch unless
        ``prune.init == "fresh"``."""
        eff = searched.provider.effective_weights(searched.tables)
        scores = search_split_scores(searched, eff) if prune.score == "fisher" else eff
        importance = (
            search_split_field_importance(searched, eff, prune.field_confidence)
            if field_allocation(prune, "field")
            else None
        )
        rule = "searched values, alpha folded in"
        return magnitude_pruned(self.name, scores, prune, eff, searched.arch_state, rule, importance)


class AutoSrhMethod(DNISMethod):
    """AutoSrh: the same search as :class:`DNISMethod` under its journal name."""

    name = "autosrh"
