"""Run-directory outputs: ``results.json`` written atomically, peak memory read-outs."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any, Dict, Union

import torch

from recdim.fsio import write_atomic


def write_json(path: Union[str, Path], data: Dict[str, Any]) -> Path:
    """Writes ``data`` as indented JSON via a temporary file and an atomic rename (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_default) + "\n")
    return path


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def peak_memory() -> Dict[str, int]:
    """Peak resident memory of this process (bytes) and, on GPU, peak allocated device memory."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    return out
