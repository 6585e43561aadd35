"""From a search run to pruned models: masks at each budget and the values retraining starts from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from safetensors.torch import load_file

from recdim.config import Config
from recdim.config_io import from_dict
from recdim.data.prepared import PreparedDataset
from recdim.modules.uniform import table_name
from recdim.layout.masks import magnitude_masks, mask_stats, prefix_masks
from recdim.search.run import method_class
from recdim.modules.table_init import full_tables, table_rows
from recdim.train.model_io import load_model
from recdim.train.run import open_session


@dataclass
class PrunedModel:
    """One pruned model: which entries stay, and what retraining starts from.

    Args:
        method: the search method that produced it.
        cr: compression rate actually met (uniform / kept).
        masks: ``{feature: bool [N, K]}``.
        values: ``{feature: [N, K]}`` initial table values for retraining (entries outside the mask are
            ignored), or None for a fresh masked initialisation.
        arch_state: arch state dict to start from, or None for a fresh arch (seeded).
        info: JSON-ready facts (target budget, snapshot step, init rule).
    """

    method: str
    cr: float
    masks: Dict[str, torch.Tensor]
    values: Optional[Dict[str, torch.Tensor]] = None
    arch_state: Optional[Dict[str, torch.Tensor]] = None
    info: Dict[str, Any] = field(default_factory=dict)


def search_config(search_dir: Path) -> Config:
    """The config a search run was made with (from its ``results.json``)."""
    results = json.loads((search_dir / "results.json").read_text())
    return from_dict(Config, results["config"], source=str(search_dir / "results.json"))


def _by_feature(tables: Mapping[str, torch.Tensor], features: List[str]) -> Dict[str, torch.Tensor]:
    return {f: tables[table_name(f)] for f in features}


def derive(cfg: Config, search_dir: Path) -> List[PrunedModel]:
    """Rebuilds the searched model in this (one-process) group, loads its trained state and derives one
    :class:`PrunedModel` per budget.

    Args:
        cfg: prune settings (``cfg.prune``); the model itself is rebuilt from the search run's config.
        search_dir: a ``recdim search`` run directory.

    Example::

        for pm in derive(cfg, Path("runs/dnis")):
            print(pm.cr, mask_stats(pm.masks))
    """
    results = json.loads((search_dir / "results.json").read_text())
    method = results["search"]["method"]
    scfg = search_config(search_dir)
    m = method_class(method)(scfg)
    dataset = PreparedDataset(scfg.data_path)
    features = dataset.feature_names(scfg.data.features)
    session = open_session(scfg, m.provider_factory(dataset, features))
    if session.ctx.world_size != 1:
        raise RuntimeError("recdim prune runs in one process (it reads whole tables); run it without torchrun")
    load_model(session.dmp, search_dir)
    provider = session.model.provider
    arch_state = {k: v.detach().clone() for k, v in session.model.arch.state_dict().items()}
    tables = full_tables(session.dmp)
    init = cfg.prune.init
    if method in ("dnis", "autosrh"):
        eff = provider.effective_weights(tables)
        budgets = [("eps", cfg.prune.eps)] if cfg.prune.eps > 0 else [("cr", c) for c in cfg.prune.crs]
        out = []
        for kind, b in budgets:
            masks = magnitude_masks(eff, cr=b) if kind == "cr" else magnitude_masks(eff, eps=b)
            fresh = init == "fresh"
            out.append(PrunedModel(method, mask_stats(masks)["cr"], masks, None if fresh else eff, None if fresh else arch_state,
                                   {kind: b, "init": "fresh" if fresh else "searched values, alpha folded in"}))
        return out
    if method == "pep":
        snaps = json.loads((search_dir / "snapshots.json").read_text()).get("snapshots", [])
        if not snaps:
            raise ValueError(f"{search_dir / 'snapshots.json'}: PEP reached none of its budgets; train longer or raise pep.budgets")
        out = []
        for snap in snaps:
            saved = load_file(str(search_dir / snap["file"]))
            masks = {f: saved[table_name(f)] for f in features}
            if init == "inherit":
                values, arch, rule = provider.effective_weights(tables), arch_state, "searched values S(V, s)"
            elif init == "fresh":
                values, arch, rule = None, None, "fresh"
            else:
                values, arch, rule = _pep_rewind(scfg, provider, features), None, "lottery ticket: initial values"
            out.append(PrunedModel(method, mask_stats(masks)["cr"], masks, values, arch,
                                   {"budget": snap["budget"], "step": snap["step"], "init": rule}))
        return out
    if method == "autodim":
        dims = json.loads((search_dir / "autodim_dims.json").read_text())["dims"]
        rows = {f: dataset.schema[f].num_embeddings for f in features}
        masks = prefix_masks(rows, {f: int(dims[f]) for f in features}, scfg.model.embedding_dim)
        values = None
        if init == "inherit":
            values = _autodim_prefix_values(tables, {f: int(dims[f]) for f in features}, scfg.model.embedding_dim)
        return [PrunedModel(method, mask_stats(masks)["cr"], masks, values, None,
                            {"dims": dims, "init": "inherit prefix" if values is not None else "fresh"})]
    raise ValueError(f"no pruning rule for search method {method!r}")


def _pep_rewind(scfg: Config, provider: Any, features: List[str]) -> Dict[str, torch.Tensor]:
    """PEP's tables as initialised (before any step): the values V, thresholds split off.

    Each table's values are regenerated from the seed and its state-dict key in the model, which depends on
    the table's lookup path (``provider.ebc.embedding_bags.<t>.weight`` for single-valued features,
    ``provider.ec.embeddings.<t>.weight`` for bags; :meth:`ThresholdEmbeddingProvider.table_key`).
    """
    out = {}
    for i, f in enumerate(features):
        t = next(t for t in provider.tables if t.name == table_name(f))
        key = f"provider.{provider.table_key(t.name)}"
        full = table_rows(scfg.train.seed, key, (0, t.num_embeddings), (0, t.embedding_dim), t.embedding_dim, scfg.train.init_std)
        values, _, _ = provider.thresholds.split_piece(i, full, (0, full.size(1)))
        out[f] = values
    return out


def _autodim_prefix_values(tables: Mapping[str, torch.Tensor], dims: Mapping[str, int], K: int) -> Dict[str, torch.Tensor]:
    """Each field's searched values at its selected dimension, zero-padded to K: the prefix of the shared
    largest-candidate table, or the selected candidate's own table when candidates were separate."""
    out = {}
    for f, d in dims.items():
        w = tables[table_name(f)] if table_name(f) in tables else tables[f"{table_name(f)}_d{d}"]
        padded = torch.zeros(w.size(0), K)
        padded[:, : min(K, w.size(1))] = w[:, :K]
        out[f] = padded
    return out
