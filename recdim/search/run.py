"""``recdim search``: train with a search method's provider and hooks, save what it learned."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from recdim.config import Config
from recdim.data.prepared import PreparedDataset
from recdim.fsio import write_json
from recdim.search.method import create
from recdim.train.model_io import save_model
from recdim.train.run import open_session, train_and_evaluate


def run_search(cfg: Config, out_dir: Optional[Path], method: Optional[str] = None) -> Dict[str, Any]:
    """Searches with ``method`` (default ``cfg.search.method``) and writes the run directory.

    The run directory gets the method's learned state (alpha / thresholds / architecture weights, as
    safetensors plus JSON), the trained model (``model/``, a sharded checkpoint ``recdim prune`` reads),
    and ``results.json`` with validation-selected and test metrics, the rows of every split (architecture
    steps learn on the ``search`` split carved from train, when the method takes them), embedding params and bytes, the
    method's summary under ``search`` and the config.

    Example::

        results = run_search(load("configs/demo.toml"), Path("runs/dnis"), method="dnis")
    """
    name = method or cfg.search.method
    m = create(name, cfg, kind="search")
    dataset = PreparedDataset(cfg.data_path)
    features = dataset.feature_names(cfg.data.features)
    session = open_session(
        cfg,
        m.provider_factory(dataset, features),
        m.hooks,
        out_dir=Path(out_dir) if out_dir is not None else None,
        search_split=m.search_split(),
    )
    results = train_and_evaluate(session, None)
    summary = m.save(session, Path(out_dir)) if out_dir is not None else {}
    if out_dir is not None:
        save_model(session.dmp, out_dir, session.trainer.global_step, {"method": name})
    results["search"] = {"method": name, **results.get("search", {}), **summary}
    if out_dir is not None and session.ctx.is_main:
        write_json(Path(out_dir) / "results.json", results)
    return results
