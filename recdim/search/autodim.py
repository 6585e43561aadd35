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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

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
        bilevel = BilevelHook(
            provider, loader, BilevelConfig(arch_lr=self.autodim.arch_lr, update_every=self.autodim.update_every)
        )
        a = self.autodim
        schedule = lambda t: gumbel_temperature(t, a.tau_start, a.tau_decay, a.tau_min)  # noqa: E731
        self.hook = AutoDimHook(provider, bilevel, a.pretrain_steps, a.pretrain_epochs, schedule)
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
