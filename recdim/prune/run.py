"""``recdim prune``: a search run -> one pruned model directory per budget."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List

from recdim.config import Config
from recdim.fsio import write_json
from recdim.prune.derive import derive
from recdim.prune.planner import PlannerConfig
from recdim.prune.store import write_pruned

log = logging.getLogger(__name__)


def run_prune(cfg: Config, search_dir: Path, out_dir: Path) -> List[Path]:
    """Derives the masks of every budget from ``search_dir`` and writes them under ``out_dir``
    (``cr-<rate>/``, see :mod:`recdim.prune.store`) with an index ``prune.json``. One process.

    Example::

        cfg = load("configs/demo.toml", ["prune.crs=[4.0, 8.0]"])
        dirs = run_prune(cfg, Path("runs/dnis"), Path("runs/dnis-pruned"))
    """
    planner = PlannerConfig(max_tiers=cfg.prune.max_tiers)
    dirs: List[Path] = []
    index: List[Dict[str, Any]] = []
    for pm in derive(cfg, search_dir):
        d = write_pruned(out_dir, pm, planner, {"search": str(search_dir)})
        dirs.append(d)
        index.append({"dir": d.name, "method": pm.method, "cr": pm.cr, **pm.info})
        log.info("pruned %s: CR %.2f -> %s", pm.method, pm.cr, d)
    write_json(out_dir / "prune.json", {"search": str(search_dir), "pruned": index})
    return dirs
