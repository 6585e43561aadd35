"""AutoDim search driver: pre-training with equal weights, then Gumbel-softmax search on held-out batches.

AutoDim's architecture weights learn on the ``search`` split held out of train (:mod:`recdim.data.search_split`,
``search.split``), the paper's validation role; the validation split only selects the epoch and the model.

Schedule (steps counted by the training loop):

1. Pre-training: the first ``pretrain_steps`` steps and ``pretrain_epochs`` epochs train tables,
   transforms and the arch with every candidate weighted 1/J (:class:`EqualMixing`); no Gumbel noise, no
   architecture steps, alpha untouched.
2. Search: candidates are mixed by a Gumbel-softmax of alpha at temperature
   ``tau(t) = max(tau_min, tau_start - tau_decay * t)`` (AutoDim's ``max(0.01, 1 - 5e-5 t)``), t counting
   search steps; every f-th search step takes one first-order architecture step on a search-split batch of
   at most ``AutoDimConfig.val_batch_size`` rows (:class:`~recdim.search.bilevel.BilevelHook`, tables frozen).
3. Derivation: each feature keeps ``argmax_j alpha_fj`` (:meth:`CandidateDimsProvider.derive_dims`).

Variants (the paper's ablations) by configuration: ``storage`` (weight sharing or one table per candidate),
``transform`` (Linear + BatchNorm or zero padding), ``tau_decay = 0`` (a fixed temperature, no annealing),
``second_order`` (the unrolled DARTS gradient, :class:`UnrolledBilevelHook`); and by method: ``autodim_s``
(:class:`AutoDimSoftMethod`) scores the searched soft mixture as it is, with neither the argmax selection nor
retraining.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Mapping, Optional, Sequence, Type

import torch
from safetensors.torch import save_file

from recdim.config import Config, ModelConfig, PruneConfig
from recdim.config.autodim import AutoDimConfig
from recdim.config.search_split import SearchSplitConfig
from recdim.data.loader import TrainLoader
from recdim.data.prepared import PreparedDataset
from recdim.layout.masks import CR_TOLERANCE, kept_for_cr, mask_stats, prefix_masks
from recdim.layout.pruned import PrunedModel
from recdim.modules.candidate_dims import (
    CandidateDimsProvider,
    CandidateMixing,
    EqualMixing,
    GumbelSoftmaxMixing,
    LinearBatchNorm,
    NoiseFn,
    SeparateTables,
    SharedPrefix,
    ZeroPad,
    gumbel_noise,
)
from recdim.modules.uniform import table_name
from recdim.search.bilevel import BilevelConfig, BilevelHook, arch_batch_size, search_rows
from recdim.search.dims_at_budget import dims_at_budget
from recdim.search.dnis import UnrolledArchGradient
from recdim.search.method import SearchedModel, SearchMethod
from recdim.train.build import ProviderFactory
from recdim.train.hooks import StepHook


def gumbel_temperature(step: int, start: float = 1.0, decay: float = 5e-5, floor: float = 0.01) -> float:
    """AutoDim's temperature after ``step`` search steps: ``max(floor, start - decay * step)``.

    Example::

        gumbel_temperature(10_000)   # 0.5
    """
    return max(floor, start - decay * step)


class AutoDimHook(StepHook):
    """Runs the AutoDim schedule: equal-weight pre-training, then Gumbel-softmax search with
    architecture steps every f search steps.

    Args:
        provider: the candidate-dimension provider.
        bilevel: takes the architecture steps; its ``update_every`` is f, counted in search steps.
        pretrain_steps: training steps before the search.
        pretrain_epochs: epochs before the search (both limits must be passed).
        temperature: search step -> tau.
        noise: Gumbel noise source for the search mixing (fixed noise in tests).

    Example::

        bilevel = BilevelHook(provider, val_loader, BilevelConfig(arch_lr=0.01, update_every=10))
        hook = AutoDimHook(provider, bilevel, pretrain_steps=1000)
    """

    def __init__(
        self,
        provider: CandidateDimsProvider,
        bilevel: BilevelHook,
        pretrain_steps: int = 0,
        pretrain_epochs: int = 0,
        temperature: Callable[[int], float] = gumbel_temperature,
        noise: NoiseFn = gumbel_noise,
    ) -> None:
        if bilevel.cfg.warm_start_epochs:
            raise ValueError("use pretrain_epochs, not the bilevel warm start, to delay the AutoDim search")
        self.provider = provider
        self.bilevel = bilevel
        self.pretrain_steps = int(pretrain_steps)
        self.pretrain_epochs = int(pretrain_epochs)
        self.temperature = temperature
        self.mixing = GumbelSoftmaxMixing(temperature(0), noise)
        self.search_start: Optional[int] = None

    @property
    def searching(self) -> bool:
        return self.search_start is not None

    def start_search(self, step: int) -> None:
        """Switches from equal weights to the Gumbel-softmax at global step ``step``."""
        self.search_start = step
        self.mixing.tau = self.temperature(0)
        self.provider.mixing = self.mixing

    def on_train_start(self, trainer: Any) -> None:
        if self.searching:
            self.provider.mixing = self.mixing
            return
        self.provider.mixing = EqualMixing()
        if self.pretrain_steps <= trainer.global_step and self.pretrain_epochs <= trainer.epoch:
            self.start_search(trainer.global_step)

    def after_step(self, trainer: Any, step: int, batch: Any) -> None:
        if self.search_start is None:
            if step >= self.pretrain_steps and trainer.epoch >= self.pretrain_epochs:
                self.start_search(step)
            return
        t = step - self.search_start
        self.bilevel.after_step(trainer, t, batch)  # an architecture step when t % f == 0
        self.mixing.tau = self.temperature(t)

    def on_epoch_end(self, trainer: Any, epoch: int, val_metrics: Dict[str, float]) -> None:
        if (
            self.search_start is None
            and epoch + 1 >= self.pretrain_epochs
            and trainer.global_step >= self.pretrain_steps
        ):
            self.start_search(trainer.global_step)

    def state_dict(self) -> Dict[str, Any]:
        """Search progress and the architecture optimizer, for training checkpoints (alpha itself lives
        in the model's state)."""
        return {
            "search_start": -1 if self.search_start is None else self.search_start,
            "tau": self.mixing.tau,
            "bilevel": self.bilevel.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        start = int(state["search_start"])
        self.bilevel.load_state_dict(state["bilevel"])
        self.mixing.tau = float(state["tau"])
        self.search_start = None if start < 0 else start
        self.provider.mixing = self.mixing if self.searching else EqualMixing()

    def state(self) -> Dict[str, Any]:
        return {
            "autodim": {
                "search_start": self.search_start,
                "tau": self.mixing.tau if self.searching else None,
                "arch_steps": self.bilevel.arch_steps,
                "dims": self.provider.derive_dims(),
            }
        }


def mixing_for(tau: float) -> CandidateMixing:
    """The mixing a recorded temperature stands for: ``0`` equal weights (pre-training), else the
    Gumbel-softmax at ``tau`` (noise-free in eval: ``softmax(alpha / tau)``)."""
    return EqualMixing() if tau == 0 else GumbelSoftmaxMixing(tau)


class AutoDimSoftHook(AutoDimHook):
    """:class:`AutoDimHook` that also records the mixing of the epoch validation selects, so that the
    restored (validation-selected) model can be scored with the mixing it was selected with (AutoDim-s).

    The temperature keeps falling after the best epoch, and an epoch of the pre-training is scored with
    equal weights, so the mixing at the end of training is not, in general, the one the selected state was
    validated with. ``selected_tau`` is that epoch's temperature (``0``: equal weights; ``None`` before the
    first epoch ends). Same arguments as :class:`AutoDimHook`.

    Example::

        hook = AutoDimSoftHook(provider, bilevel, pretrain_steps=1000)
        trainer.fit(train, val)                       # restores the best epoch's state
        provider.mixing = mixing_for(hook.selected_tau)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.selected_tau: Optional[float] = None

    def current_tau(self) -> float:
        """The temperature of the mixing in use now (``0``: equal weights)."""
        return self.mixing.tau if self.searching else 0.0

    def on_epoch_end(self, trainer: Any, epoch: int, val_metrics: Dict[str, float]) -> None:
        # Called after this epoch's validation and before the trainer keeps its state when it is the best
        # (and before the search may start below): the mixing now is the one that was validated.
        name, higher = trainer.selection
        best, value = trainer.fit_state.best_value, val_metrics[name]
        if best is None or (value > best if higher else value < best):
            self.selected_tau = self.current_tau()
        super().on_epoch_end(trainer, epoch, val_metrics)

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "selected_tau": -1.0 if self.selected_tau is None else self.selected_tau}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        tau = float(state["selected_tau"])
        self.selected_tau = None if tau < 0 else tau

    def state(self) -> Dict[str, Any]:
        out = super().state()
        out["autodim"]["selected_tau"] = self.selected_tau
        return out


@contextlib.contextmanager
def fixed_gumbel_noise(provider: CandidateDimsProvider) -> Iterator[None]:
    """Within this context every forward of ``provider`` reuses one Gumbel draw per feature group (the
    first), so that the several passes of one second-order architecture step see the same mixing weights.
    A no-op unless the provider mixes by :class:`GumbelSoftmaxMixing`.

    Example::

        with fixed_gumbel_noise(provider):
            a, b = model(batch), model(batch)      # the same p in both
    """
    mixing = provider.mixing
    if not isinstance(mixing, GumbelSoftmaxMixing):
        yield
        return
    draw, drawn = mixing.noise, {}

    def replay(features: Sequence[int], alpha: torch.Tensor) -> torch.Tensor:
        key = tuple(features)
        if key not in drawn:
            drawn[key] = draw(features, alpha)
        return drawn[key]

    mixing.noise = replay
    try:
        yield
    finally:
        mixing.noise = draw


class UnrolledBilevelHook(UnrolledArchGradient, BilevelHook):
    """Architecture steps with the second-order (unrolled, DARTS) gradient of AutoDim's eq. 9::

        ∇_α L_val(W', α) − ∇²_{α,W} L_train(W, α) · Ξ ∇_{W'} L_val(W', α),     W' = W − Ξ ∇_W L_train(W, α)

    computed by :func:`~recdim.search.dnis.unrolled_arch_grad` (finite-difference Hessian product) on the
    training batch just trained on and one search-split batch, with one Gumbel draw for all its passes
    (:func:`fixed_gumbel_noise`). W is every trainable parameter outside the fused optimizer and outside
    alpha: the candidate transforms and the arch, Ξ = ``train.lr``, plus the tables when they are
    materialised (the dense kernel), Ξ = ``train.embedding_lr``; tables under the fused optimizer are frozen
    in every pass, so for them the gradient is first-order. The BatchNorm running statistics of the
    transforms see each of the four training-mode passes.

    Args:
        provider: the candidate-dimension provider.
        val_batches: a loader over the search split (cycled).
        cfg: learning rate and frequency of the architecture steps.
        lr: the dense learning rate (``train.lr``).
        embedding_lr: the table learning rate (``train.embedding_lr``).
        fd_epsilon: finite-difference step, divided by the norm of the direction.

    Example::

        bilevel = UnrolledBilevelHook(provider, loader, BilevelConfig(update_every=10), lr=1e-3, embedding_lr=0.05)
    """

    def __init__(
        self,
        provider: CandidateDimsProvider,
        val_batches: TrainLoader,
        cfg: BilevelConfig,
        lr: float,
        embedding_lr: float,
        fd_epsilon: float = 0.01,
    ) -> None:
        super().__init__(provider, val_batches, cfg)
        self.lr, self.embedding_lr, self.fd_epsilon = float(lr), float(embedding_lr), float(fd_epsilon)
        self._train_batch = None

    def noise_scope(self) -> ContextManager[Any]:
        return fixed_gumbel_noise(self.provider)


def build_candidate_provider(
    cfg: AutoDimConfig, model: ModelConfig, num_embeddings: Dict[str, int], weighted: bool, device: torch.device
) -> CandidateDimsProvider:
    """The AutoDim provider for a config."""
    storage = SharedPrefix() if cfg.storage == "shared" else SeparateTables()
    transform = LinearBatchNorm if cfg.transform == "linear_bn" else ZeroPad
    return CandidateDimsProvider(
        num_embeddings, model.embedding_dim, cfg.candidates, storage, transform, model.pooling, weighted, device
    )


def autodim_section(cfg: Config) -> AutoDimConfig:
    """``cfg.search.autodim`` when the config has one, else the defaults."""
    section = getattr(getattr(cfg, "search", None), "autodim", None)
    return section if isinstance(section, AutoDimConfig) else AutoDimConfig()


def save_architecture(provider: CandidateDimsProvider, out_dir: Path) -> Dict[str, Any]:
    """Writes ``autodim_dims.json`` (the derived dimension per feature, candidates, weights) and
    ``autodim_weights.safetensors`` (alpha and softmax(alpha) per feature); returns the JSON content."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = provider.candidate_weights()
    summary = {
        "dims": provider.derive_dims(),
        "candidates": {f: list(d) for f, d in provider.dims.items()},
        "weights": {f: [round(float(x), 6) for x in w] for f, w in weights.items()},
    }
    tensors = {
        f"alpha.{f}": a.detach().float().cpu().contiguous() for f, a in zip(provider.feature_names, provider.alpha)
    }
    tensors.update({f"softmax.{f}": w.contiguous() for f, w in weights.items()})
    save_file(tensors, str(out / "autodim_weights.safetensors"))
    (out / "autodim_dims.json").write_text(json.dumps(summary, indent=2))
    return summary


class AutoDimMethod(SearchMethod):
    """AutoDim (candidate dimensions with Gumbel-softmax architecture weights) as a search method.

    Args:
        cfg: the experiment config.
        autodim: AutoDim settings (default ``cfg.search.autodim``).

    Example::

        method = AutoDimMethod(cfg)
        factory = method.provider_factory(ds, features)
        session = open_session(cfg, factory, method.hooks, search_split=method.search_split())
        train_and_evaluate(session, out)
        method.save(session, out)          # autodim_dims.json, autodim_weights.safetensors
    """

    name = "autodim"
    budget_free = True
    hook_type: Type[AutoDimHook] = AutoDimHook
    """The schedule hook :meth:`hooks` builds."""

    def __init__(self, cfg: Config, autodim: Optional[AutoDimConfig] = None) -> None:
        super().__init__(cfg)
        self.autodim = autodim if autodim is not None else autodim_section(cfg)
        self.hook: Optional[AutoDimHook] = None

    def provider_factory(self, dataset: PreparedDataset, features: Sequence[str]) -> ProviderFactory:
        def factory(
            model: ModelConfig, num_embeddings: Dict[str, int], weighted: bool, device: torch.device
        ) -> CandidateDimsProvider:
            return build_candidate_provider(self.autodim, model, num_embeddings, weighted, device)

        return factory

    def search_split(self) -> Optional[SearchSplitConfig]:
        """Architecture steps learn on the ``search`` split held out of train."""
        return self.cfg.search.split

    def hooks(self, session: Any) -> List[StepHook]:
        provider = session.model.provider
        if not isinstance(provider, CandidateDimsProvider):
            raise TypeError(f"AutoDim needs a CandidateDimsProvider, got {type(provider).__name__}")
        ctx, val = session.ctx, search_rows(session)
        batch = arch_batch_size(self.cfg.train.batch_size, self.autodim.val_batch_size, len(val), ctx.world_size)
        loader = TrainLoader(
            val,
            session.features,
            batch,
            ctx.rank,
            ctx.world_size,
            self.cfg.train.seed,
            session.dataset.schema.is_weighted,
        )
        a = self.autodim
        steps = BilevelConfig(arch_lr=a.arch_lr, update_every=a.update_every)
        if a.second_order:
            train = self.cfg.train
            bilevel: BilevelHook = UnrolledBilevelHook(
                provider, loader, steps, train.lr, train.embedding_lr, a.fd_epsilon
            )
        else:
            bilevel = BilevelHook(provider, loader, steps)
        schedule = lambda t: gumbel_temperature(t, a.tau_start, a.tau_decay, a.tau_min)  # noqa: E731
        self.hook = self.hook_type(provider, bilevel, a.pretrain_steps, a.pretrain_epochs, schedule)
        return [self.hook]

    def save(self, session: Any, out_dir: Path) -> Dict[str, Any]:
        provider = session.model.provider
        if not session.ctx.is_main:
            return {"method": self.name, "dims": provider.derive_dims()}
        summary = save_architecture(provider, out_dir)
        return dict(summary, method=self.name, arch_steps=self.hook.bilevel.arch_steps if self.hook else 0)

    def derive(self, searched: SearchedModel, prune: PruneConfig) -> List[PrunedModel]:
        """One pruned model per ``prune.crs``: every row of a field keeps the prefix of its dimension, the
        highest-weighted candidate, stepped down where the budget needs it (:func:`dims_at_budget`); with no
        ``prune.crs``, AutoDim's own choice at the rate it implies. With ``prune.init == "inherit"``
        retraining starts from the searched prefix values, else fresh.

        Raises:
            ValueError: for a CR beyond what the smallest candidates allow.
        """
        if prune.score != "magnitude":
            raise ValueError(
                f"{self.name} derives its masks from its architecture weights; prune.score = {prune.score!r} "
                "applies to DNIS / AutoSrh and magnitude pruning only"
            )
        if prune.allocation == "field":
            raise ValueError(
                f"{self.name} derives its masks from its architecture weights; prune.allocation = 'field' applies to "
                "DNIS / AutoSrh, magnitude pruning and PEP only"
            )
        arch = json.loads((searched.search_dir / "autodim_dims.json").read_text())
        K = searched.cfg.model.embedding_dim
        features = searched.features
        rows = {f: searched.dataset.schema[f].num_embeddings for f in features}
        own = {f: int(arch["dims"][f]) for f in features}
        targets: List[Optional[float]] = list(prune.crs) or [None]
        out = []
        for cr in targets:
            dims = own
            if cr is not None:
                budget = kept_for_cr(sum(rows.values()) * K, cr)
                try:
                    dims = dims_at_budget(rows, arch["candidates"], arch["weights"], budget)
                except ValueError as e:
                    raise ValueError(f"{self.name}: CR {cr:g} cannot be produced: {e}") from None
            masks = prefix_masks(rows, dims, K)
            met = mask_stats(masks)["cr"]
            if cr is not None and met < cr * (1 - CR_TOLERANCE):
                raise ValueError(f"{self.name}: CR {cr:g} cannot be produced (the dims meet CR {met:.4g})")
            values = prefix_values(searched.tables, dims, K) if prune.init == "inherit" else None
            info = {"dims": dims, "own_dims": own, "init": "inherit prefix" if values is not None else "fresh"}
            out.append(PrunedModel(self.name, met, masks, values, None, {**info, "cr": cr}, target=cr))
        return out


def prefix_values(tables: Mapping[str, torch.Tensor], dims: Mapping[str, int], K: int) -> Dict[str, torch.Tensor]:
    """Each field's searched values at its selected dimension, zero-padded to K: the prefix of the shared
    largest-candidate table, or the selected candidate's own table when candidates were separate."""
    out = {}
    for f, d in dims.items():
        w = tables[table_name(f)] if table_name(f) in tables else tables[f"{table_name(f)}_d{d}"]
        padded = torch.zeros(w.size(0), K)
        padded[:, : min(K, w.size(1))] = w[:, :K]
        out[f] = padded
    return out


def soft_model_params(provider: CandidateDimsProvider) -> Dict[str, int]:
    """Every value the searched soft mixture stores to embed a batch, by kind: the tables (all candidates:
    the shared largest-candidate table, or one table per candidate), the candidate transforms (Linear
    weights of the real ``K x d_j`` blocks and biases), their BatchNorm running means and variances, and
    alpha.

    Example::

        p = CandidateDimsProvider({"user": 100}, 16)   # candidates 4, 8, 16, Linear + BatchNorm
        soft_model_params(p)
        # {"tables": 1600, "transforms": 496, "normalisation": 96, "alpha": 3, "total": 2195}
    """
    transforms = normalisation = 0
    for (_, members), t in zip(provider.groups, provider.transforms):
        if isinstance(t, LinearBatchNorm):
            channels = t.num_candidates * t.embedding_dim
            transforms += len(members) * (int(t.mask.sum()) + channels)  # K * sum_j d_j weights, J * K biases
            normalisation += 2 * len(members) * channels
        else:
            transforms += sum(p.numel() for p in t.parameters())
    out = {
        "tables": int(provider.embedding_params()),
        "transforms": int(transforms),
        "normalisation": int(normalisation),
        "alpha": int(sum(a.numel() for a in provider.alpha)),
    }
    out["total"] = sum(out.values())
    return out


class AutoDimSoftMethod(AutoDimMethod):
    """AutoDim-s, the paper's ablation without the argmax selection and retraining: the soft mixture the
    search trained (every candidate, its transform and the architecture weights) is scored as it is.

    The search is AutoDim's; its hook (:class:`AutoDimSoftHook`) records the mixing of the epoch the
    validation selects. :meth:`evaluate_searched` then rebuilds the validation-selected model with that
    mixing and reads validation and test once. Its size is what it stores (:func:`soft_model_params`):
    the tables of every candidate plus the transforms, at least as many values as a uniform model of width
    K when the largest candidate is K, so its compression rate is at most about 1 whatever the budget
    (the budget-free search serves every budget).

    Args:
        cfg: the experiment config.
        autodim: AutoDim settings (default ``cfg.search.autodim``).

    Example::

        method = AutoDimSoftMethod(cfg)
        run_search(cfg, Path("runs/autodim_s/search"), method="autodim_s")
        result = method.evaluate_searched(Path("runs/autodim_s/search"), Path("runs/autodim_s/eval"))
        result["prune"]["cr"]      # uniform values / stored values, <= 1 with K among the candidates
    """

    name = "autodim_s"
    hook_type = AutoDimSoftHook

    def derive(self, searched: SearchedModel, prune: PruneConfig) -> List[PrunedModel]:
        """AutoDim-s has no pruned model: it is scored as searched (:meth:`evaluate_searched`).

        Raises:
            ValueError: always.
        """
        raise ValueError(
            f"{self.name} scores the searched soft mixture as it is and has no pruned models; "
            "prune an autodim search to select and retrain dimensions"
        )

    def evaluate_searched(self, search_dir: Path, out_dir: Optional[Path] = None) -> Dict[str, Any]:
        """Scores the validation-selected soft mixture of ``search_dir`` and writes ``<out_dir>/results.json``.

        The model is rebuilt from the search's config and saved state (the best epoch's), mixed as at that
        epoch (``selected_tau``), and evaluated without a training step: validation, then test, once.

        Args:
            search_dir: an ``autodim_s`` search run.
            out_dir: where ``results.json`` goes (None: nowhere).

        Returns:
            What :func:`recdim.retrain.tiers.run_retrain` returns, for the soft model: ``val``, ``test``,
            ``params`` and ``bytes`` (every stored value, float32; ``stored`` by kind), ``retrain_time_s``
            (the evaluation's), ``field_dims`` (stored width per field) and ``prune`` (``cr``: uniform
            values / stored values; ``info``: mixing, weights, and the argmax dims, not applied).

        Raises:
            ValueError: when ``search_dir`` is not an ``autodim_s`` search.
        """
        from recdim.config_io import from_dict
        from recdim.fsio import write_json
        from recdim.train.model_io import load_model
        from recdim.train.run import evaluate_as_is, open_session

        t0 = time.perf_counter()
        search_dir = Path(search_dir)
        searched = json.loads((search_dir / "results.json").read_text())
        tau = searched.get("search", {}).get("autodim", {}).get("selected_tau")
        if searched.get("search", {}).get("method") != self.name or tau is None:
            raise ValueError(f"{search_dir}: not a finished {self.name} search (no selected mixing recorded)")
        scfg = from_dict(Config, searched["config"], source=str(search_dir / "results.json"))
        dataset = PreparedDataset(scfg.data_path)
        features = dataset.feature_names(scfg.data.features)
        session = open_session(scfg, type(self)(scfg).provider_factory(dataset, features))
        load_model(session.dmp, search_dir)
        provider = session.model.provider
        provider.mixing = mixing_for(float(tau))
        results = evaluate_as_is(session)
        stored = soft_model_params(provider)
        uniform = sum(provider.num_embeddings.values()) * provider.embedding_dim
        widths = {f: sum(t.embedding_dim for t in provider.tables if f in t.feature_names) for f in features}
        info = {
            "mixing": "equal" if tau == 0 else "gumbel_softmax",
            "selected_tau": float(tau),
            "weights": {f: [round(float(x), 6) for x in w] for f, w in provider.candidate_weights().items()},
            "argmax_dims": provider.derive_dims(),
            "stored_dims": widths,
            "init": "searched",
        }
        results.update(
            params=stored["total"],
            bytes=4 * stored["total"],
            stored=stored,
            search_val=searched["val"],
            retrain_mode="none: the soft mixture as searched",
            field_dims={
                f: {"rows": provider.num_embeddings[f], "row_mean": float(w), "freq_weighted": float(w)}
                for f, w in widths.items()
            },
            prune={
                "method": self.name,
                "cr": uniform / stored["total"],
                "kept": stored["total"],
                "total": uniform,
                "info": info,
                "tiers": None,
                "source": str(search_dir),
            },
        )
        results["retrain_time_s"] = time.perf_counter() - t0
        if out_dir is not None and session.ctx.is_main:
            write_json(Path(out_dir) / "results.json", results)
        return results
