"""Id remaps as modules: original ids -> global tier rows (-1 for dropped ids), in the stored dtypes."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from recdim.layout.tier_plan import PAD, DenseRemap, IdRemap, RunRemap


class DenseRemapLookup(nn.Module):
    """``remap[id]`` from a per-id array (int8 / int16 / int32 as planned).

    Args:
        remap: the plan's dense remap.
        device: where the (replicated, non-trainable) buffer lives.

    Call:
        ids (Tensor): [L] int64 original ids.

    Returns:
        Tensor: [L] int64 global tier rows, -1 for dropped ids.
    """

    def __init__(self, remap: DenseRemap, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.register_buffer("table", remap.table.clone().to(device), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table.index_select(0, ids).to(torch.int64)


class RunRemapLookup(nn.Module):
    """Run-length remap: ``bases[r] + id - starts[r]`` for the run r holding ``id`` (-1 for dropped runs).

    Args:
        remap: the plan's run remap.
        device: where the buffers live.

    Call:
        ids (Tensor): [L] int64 original ids.

    Returns:
        Tensor: [L] int64 global tier rows, -1 for dropped ids.
    """

    def __init__(self, remap: RunRemap, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.register_buffer("starts", remap.starts.clone().to(device), persistent=False)
        self.register_buffer("bases", remap.bases.clone().to(device), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        starts = self.starts.to(torch.int64)
        r = torch.searchsorted(starts, ids, right=True) - 1
        base = self.bases.index_select(0, r).to(torch.int64)
        return torch.where(base >= 0, base + ids - starts.index_select(0, r), torch.full_like(ids, PAD))


def remap_lookup(remap: IdRemap, device: Optional[torch.device] = None) -> nn.Module:
    """The lookup module for a plan's remap.

    Example::

        lookup = remap_lookup(plan.remap)
        rows = lookup(torch.tensor([0, 5, 7]))     # global tier rows, -1 where dropped
    """
    if isinstance(remap, DenseRemap):
        return DenseRemapLookup(remap, device)
    if isinstance(remap, RunRemap):
        return RunRemapLookup(remap, device)
    raise TypeError(f"unknown remap {type(remap).__name__}")
