"""A pruned model on disk: masks, retraining's starting values, and what the planner says it costs.

```
<prune_dir>/cr-4/
  masks.safetensors    {feature: bool [N, K]}
  values.safetensors   {feature: float32 [N, K]}, masked (absent: fresh initialisation)
  arch.safetensors     arch state to start from (absent: fresh, seeded)
  prune.json           method, compression rate, budget, init rule, plan bytes by kind, source run
```
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from safetensors.torch import load_file, save_file

from recdim.layout.masks import mask_stats
from recdim.layout.pruned import PrunedModel
from recdim.layout.tier_plan import TablePlan
from recdim.prune.planner import PlannerConfig, plan_tables

BYTE_KINDS = ("values", "column_maps", "remap", "uniform", "csr", "coo", "floor", "nnz")


def plan_bytes(plans: List[TablePlan]) -> Dict[str, Any]:
    """Bytes of all tables by kind, summed (see :class:`~recdim.layout.tier_plan.PlanBytes`), plus per table."""
    per_table = {p.name: p.bytes().to_dict() for p in plans}
    total = {k: sum(t[k] for t in per_table.values()) for k in BYTE_KINDS}
    total["total"] = total["values"] + total["column_maps"] + total["remap"]
    total["compression"] = total["uniform"] / total["total"] if total["total"] else float("inf")
    return {"total": total, "tables": per_table}


def planner_from_json(data: Mapping[str, Any]) -> PlannerConfig:
    """The :class:`PlannerConfig` stored in ``prune.json`` (lists back to tuples)."""
    return PlannerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def dir_name(pm: PrunedModel) -> str:
    """``cr-<rate>`` with the rate met, two decimals trimmed (``cr-4``, ``cr-7.98``)."""
    return f"cr-{pm.cr:.2f}".rstrip("0").rstrip(".")


def write_pruned(root: Path, pm: PrunedModel, planner: PlannerConfig, source: Mapping[str, Any]) -> Path:
    """Writes one pruned model under ``root`` and returns its directory."""
    out = root / dir_name(pm)
    out.mkdir(parents=True, exist_ok=True)
    save_file({f: m.contiguous() for f, m in pm.masks.items()}, str(out / "masks.safetensors"))
    if pm.values is not None:
        masked = {f: (v.float() * pm.masks[f]).contiguous() for f, v in pm.values.items()}
        save_file(masked, str(out / "values.safetensors"))
    if pm.arch_state is not None:
        save_file({k: v.contiguous() for k, v in pm.arch_state.items()}, str(out / "arch.safetensors"))
    plans = plan_tables(pm.masks, planner)
    meta = {
        "method": pm.method,
        "cr": pm.cr,
        **mask_stats(pm.masks),
        "info": pm.info,
        "planner": dataclasses.asdict(planner),
        "tiers": {p.name: [t.width for t in p.tiers] for p in plans},
        "bytes": plan_bytes(plans),
        "source": dict(source),
    }
    (out / "prune.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


@dataclass
class StoredPruned:
    """A pruned model read back from disk."""

    path: Path
    meta: Dict[str, Any]
    masks: Dict[str, torch.Tensor]
    values: Optional[Dict[str, torch.Tensor]]
    arch_state: Optional[Dict[str, torch.Tensor]]


def read_pruned(path: Path) -> StoredPruned:
    """Reads a directory written by :func:`write_pruned`; a missing piece is an error naming the file."""
    meta_path = path / "prune.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: not a pruned model (run `recdim prune` first)")
    meta = json.loads(meta_path.read_text())
    masks = load_file(str(path / "masks.safetensors"))
    values = load_file(str(path / "values.safetensors")) if (path / "values.safetensors").exists() else None
    arch = load_file(str(path / "arch.safetensors")) if (path / "arch.safetensors").exists() else None
    return StoredPruned(path, meta, {f: m.bool() for f, m in masks.items()}, values, arch)
