"""Run-directory read-outs: peak memory."""

from __future__ import annotations

import resource
import sys
from typing import Dict

import torch


def peak_memory() -> Dict[str, int]:
    """Peak resident memory of this process (bytes) and, on GPU, peak allocated device memory."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    return out
