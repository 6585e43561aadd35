"""From a search run to pruned models: rebuild the trained search, then ask its method for masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

from recdim.config import Config
from recdim.config_io import from_dict
from recdim.data.prepared import PreparedDataset
from recdim.layout.pruned import PrunedModel
from recdim.modules.table_init import full_tables
from recdim.search.method import SearchedModel, SearchMethod, create
from recdim.train.model_io import load_model
from recdim.train.run import open_session

__all__ = ["PrunedModel", "derive", "load_searched", "search_config"]


def search_config(search_dir: Path) -> Config:
    """The config a search run was made with (from its ``results.json``)."""
    results = json.loads((search_dir / "results.json").read_text())
    return from_dict(Config, results["config"], source=str(search_dir / "results.json"))


def load_searched(search_dir: Path) -> "tuple[SearchMethod, SearchedModel]":
    """Rebuilds the searched model of ``search_dir`` in this (one-process) group and loads its trained state.

    Returns:
        The run's method object and the :class:`SearchedModel` its :meth:`SearchMethod.derive` reads.
    """
    results = json.loads((search_dir / "results.json").read_text())
    scfg = search_config(search_dir)
    method = create(results["search"]["method"], scfg, kind="search")
    dataset = PreparedDataset(scfg.data_path)
    features = dataset.feature_names(scfg.data.features)
    session = open_session(scfg, method.provider_factory(dataset, features))
    if session.ctx.world_size != 1:
        raise RuntimeError("recdim prune runs in one process (it reads whole tables); run it without torchrun")
    load_model(session.dmp, search_dir)
    arch_state = {k: v.detach().clone() for k, v in session.model.arch.state_dict().items()}
    searched = SearchedModel(
        Path(search_dir),
        scfg,
        dataset,
        list(features),
        session.model.provider,
        full_tables(session.dmp),
        arch_state,
        session.model.arch,
    )
    return method, searched


def derive(cfg: Config, search_dir: Path) -> List[PrunedModel]:
    """One :class:`PrunedModel` per budget of ``cfg.prune`` that the search run's method can produce.

    Args:
        cfg: prune settings (``cfg.prune``); the model itself is rebuilt from the search run's config.
        search_dir: a ``recdim search`` run directory.

    Example::

        for pm in derive(cfg, Path("runs/dnis")):
            print(pm.cr, mask_stats(pm.masks))
    """
    method, searched = load_searched(Path(search_dir))
    return method.derive(searched, cfg.prune)
