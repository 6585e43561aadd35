"""An estimate of PEP's surviving values from a fixed sample of rows, to tell when a budget is still far.

On large tables an exact count costs a pass over every value trained since the last one (see
:mod:`recdim.search.kept_counter`); most counts only say that the next budget is far. :class:`SampledCount`
reads a fixed, seeded sample of each local shard's rows (``fraction`` of them) and estimates the surviving
values with a stratified estimate and its standard error (from the spread of the per-row counts, rows
being the sampled units). ``PEPHook`` counts exactly only once the estimate is no longer ``z`` standard
errors above the budget's count, so a budget is still caught at its first crossing unless the estimate is
off by more than ``z`` standard errors.
"""

from __future__ import annotations

import math
import zlib
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from recdim.modules.threshold import ThresholdEmbeddingProvider
from recdim.search.pep_tables import rank_and_world, table_pieces


class SampledCount:
    """Estimated surviving values of a (possibly sharded) PEP provider from a fixed sample of rows.

    Args:
        provider: the provider.
        fraction: sampled fraction of each local shard's rows (at least two rows a shard).
        z: standard errors the estimate must stay above a budget for it to count as far.
        seed: picks the sampled rows (the same rows in every call and after a resume).

    Example::

        sampler = SampledCount(provider, fraction=1 / 256)
        est, se = sampler.estimate()                  # collective
        far, est, se = sampler.far_above(int(0.5 * provider.embedding_params()))
    """

    def __init__(
        self, provider: ThresholdEmbeddingProvider, fraction: float = 1 / 256, z: float = 5.0, seed: int = 0
    ) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"pep.count_sample must be in (0, 1], got {fraction}")
        if not z > 0:
            raise ValueError(f"the sampled count's z must be > 0, got {z}")
        self.provider = provider
        self.fraction = float(fraction)
        self.z = float(z)
        self.seed = int(seed)
        self._samples: Optional[List[torch.Tensor]] = None

    def _rows(self) -> List[torch.Tensor]:
        """The sampled rows of each local piece (in :func:`table_pieces` order), drawn once."""
        if self._samples is None:
            self._samples = []
            for _, name, local, rows, cols in table_pieces(self.provider):
                n = local.size(0)
                key = zlib.crc32(f"{name}:{rows[0]}:{cols[0]}".encode())
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + key)
                take = min(n, max(2, math.ceil(self.fraction * n)))
                self._samples.append(torch.randperm(n, generator=g)[:take].sort().values.to(local.device))
        return self._samples

    @torch.no_grad()
    def estimate(self) -> Tuple[float, float]:
        """``(estimated surviving values, standard error)`` over every shard, identical on all ranks
        (collective). A shard sampled whole contributes its exact count and no error."""
        est = var = 0.0
        for (feature, _, local, _, cols), sample in zip(table_pieces(self.provider), self._rows()):
            n = local.size(0)
            if n == 0:
                continue
            kept, _ = self.provider.keep_mask(feature, local.index_select(0, sample), cols)
            per_row = kept.sum(dim=1, dtype=torch.float64)
            m = per_row.numel()
            est += float(per_row.sum()) * n / m
            if m < n:
                var += n * n * float(per_row.var()) / m if m > 1 else 0.0
        if rank_and_world()[1] > 1:
            both = torch.tensor([est, var], dtype=torch.float64, device=self.provider.threshold_offset.device)
            dist.all_reduce(both)
            est, var = float(both[0]), float(both[1])
        return est, math.sqrt(var)

    def far_above(self, target: int) -> Tuple[bool, float, float]:
        """``(far, estimate, standard error)``: ``far`` when the estimate is more than ``z`` standard errors
        above ``target`` surviving values (collective)."""
        est, se = self.estimate()
        return est - self.z * se > target, est, se
