"""``recdim prune``: a search run -> one pruned model directory per budget."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence

from recdim.config import Config
from recdim.fsio import write_json
from recdim.layout.pruned import PrunedModel
from recdim.prune.derive import derive
from recdim.prune.planner import PlannerConfig
from recdim.prune.store import write_pruned

log = logging.getLogger(__name__)


def run_prune(cfg: Config, search_dir: Path, out_dir: Path) -> List[Path]:
    """Derives the masks of every budget from ``search_dir`` and writes them under ``out_dir``
    (``cr-<rate>/``, see :mod:`recdim.prune.store`) with an index ``prune.json``. One process. Nothing is
    written unless every rate of ``prune.crs`` has its pruned model.

    Example::

        cfg = load("configs/demo.toml", ["prune.crs=[4.0, 8.0]"])
        dirs = run_prune(cfg, Path("runs/dnis"), Path("runs/dnis-pruned"))
    """
    planner = PlannerConfig(max_tiers=cfg.prune.max_tiers)
    dirs: List[Path] = []
    index: List[Dict[str, Any]] = []
    pruned = derive(cfg, search_dir)
    check_every_budget(pruned, cfg.prune.crs if cfg.prune.eps <= 0 else (), search_dir)
    for pm in pruned:
        d = write_pruned(out_dir, pm, planner, {"search": str(search_dir)})
        dirs.append(d)
        index.append({"dir": d.name, "method": pm.method, "cr": pm.cr, **pm.info})
        log.info("pruned %s: CR %.2f -> %s", pm.method, pm.cr, d)
    write_json(out_dir / "prune.json", {"search": str(search_dir), "pruned": index})
    return dirs


def check_every_budget(pruned: Sequence[PrunedModel], crs: Sequence[float], search_dir: Path) -> None:
    """Raises ``ValueError`` naming each rate of ``crs`` without exactly one pruned model derived for it,
    and when nothing was derived at all.

    Example::

        check_every_budget(derive(cfg, run), cfg.prune.crs, run)
    """
    if not pruned:
        raise ValueError(f"{search_dir}: no pruned model (prune.crs is empty and the method has no rate of its own)")
    targets = [pm.target for pm in pruned]
    missing = [cr for cr in crs if targets.count(cr) != 1]
    if missing:
        raise ValueError(f"{search_dir}: no pruned model for CR {', '.join(f'{c:g}' for c in missing)}")
