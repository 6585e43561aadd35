"""Routing a batch to the tier collection: one counting sort of the remapped ids, bags and a scatter index.

Given every id's lookup row (:class:`~recdim.modules.remap.TierRemap`), one ``block_bucketize_sparse_features``
(FBGEMM's counting sort: a count per (bucket, feature, sample), a prefix sum, one placement pass) splits the
rows into buckets against each feature's boundaries. It returns the local row of every id in its tier, bucket
after bucket, and inside a bucket in KJT order, which is slot order, then sample order
(:mod:`recdim.layout.tier_routing`). From the counts:

- bags: slot k gets ``m_k`` bags in positions ``0 .. m_k - 1`` of a common stride ``S = max m_k``: one id each,
  or, for pooled slots, one (sample, tier) group each, summed by the kernel;
- rows: bag s of slot k fills output row ``b * F + f`` (its sample and feature), padding bags the sink row
  ``B * F``; and the bag's row in its width's column maps (:class:`~recdim.modules.tier_scatter.TierScatter`
  writes the values there).

One host sync per batch reads ``S``, the ids per slot (the KJT's ``length_per_key``) and the longest bag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recdim.layout.tier_routing import TierRouting
from recdim.native import native_ops_available


@dataclass
class RoutedBatch:
    """A batch as the tier collection reads it, and where each of its bags goes.

    Args:
        features: keys = the slots' KJT keys, stride S, int32 local rows (and weights), bags as above.
        rows: [T, S] int64 output row (``sample * F + feature``) of bag s of slot k, ``num_rows`` for padding.
        map_row: [T, S] int64 the bag's row in its width's column maps.
        num_rows: ``B * F``, also the sink row.
        max_length: the longest bag of the original KJT (at most 1: no output row receives two bags).
    """

    features: KeyedJaggedTensor
    rows: torch.Tensor
    map_row: torch.Tensor
    num_rows: int
    max_length: int


class TierRouter(nn.Module):
    """Turns every id's lookup row into a :class:`RoutedBatch` (see the module docstring).

    Args:
        routing: the tier layout.
        keys: the KJT key of every slot, in slot order.
        num_features: F.
        device: where the (replicated, non-trainable) index buffers live.

    Call:
        rows (Tensor): [n] int32 lookup rows, in KJT order.
        lengths (Tensor): [F * B] bag lengths of the original KJT.
        weights (Optional[Tensor]): [n] per-id weights.
        batch_size (int): B.

    Returns:
        RoutedBatch.

    Example::

        router = TierRouter(routing, [t.feature_name for t in slot_tiers], F)
        batch = router(remap(ids, kjt.length_per_key()), kjt.lengths(), None, kjt.stride())
        kt = ebc(batch.features)                       # values [S, sum widths]
    """

    def __init__(
        self, routing: TierRouting, keys: Sequence[str], num_features: int, device: Optional[torch.device] = None
    ) -> None:
        super().__init__()
        if len(keys) != len(routing.slots):
            raise ValueError(f"{len(keys)} keys for {len(routing.slots)} slots")
        self._keys = list(keys)
        self._F = num_features
        self._Q = routing.num_buckets
        self._has_pooled = any(s.pooled for s in routing.slots)
        slot_qf = [s.bucket * num_features + s.feature for s in routing.slots]
        buffers = {
            "boundaries": routing.boundaries,
            "block_sizes": routing.boundaries[:, -1].contiguous(),
            "slot_of": routing.slot_of,
            "slot_qf": torch.tensor(slot_qf, dtype=torch.int64),
            "pooled": torch.tensor([s.pooled for s in routing.slots], dtype=torch.bool),
            "map_base": routing.map_base,
            "map_stride": routing.map_stride,
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.to(device), persistent=False)

    @property
    def keys(self) -> List[str]:
        """The KJT key of every slot, in slot order."""
        return list(self._keys)

    def forward(
        self, rows: torch.Tensor, lengths: torch.Tensor, weights: Optional[torch.Tensor], batch_size: int
    ) -> RoutedBatch:
        if rows.device.type == "cpu" and rows.dtype == torch.int32 and native_ops_available():
            return self._native(rows, lengths, weights, batch_size)
        F, Q, B, T = self._F, self._Q, batch_size, len(self._keys)
        device = rows.device
        new_lengths, local, new_weights, _, _ = torch.ops.fbgemm.block_bucketize_sparse_features(
            lengths.to(torch.int32),
            rows,
            False,
            False,
            self.block_sizes,
            Q + 1,
            weights,
            None,
            -1,
            list(self.boundaries.unbind(0)),
            False,
        )
        counts = new_lengths.view((Q + 1) * F, B)
        per_qf = counts.sum(1)  # ids per (bucket, feature)
        per_slot = per_qf.index_select(0, self.slot_qf)
        if self._has_pooled:
            nonempty = counts > 0
            bags = torch.where(self.pooled, nonempty.sum(1).index_select(0, self.slot_qf), per_slot)
        else:
            bags = per_slot
        longest = lengths.max().view(1).to(per_slot.dtype) if lengths.numel() else per_slot.new_zeros(1)
        host = torch.cat([longest, bags.max().view(1), per_slot]).tolist() if T else [0, 0]
        max_length, S, length_per_key = int(host[0]), max(int(host[1]), 1), [int(x) for x in host[2:]]
        n = sum(length_per_key)

        # Every kept id: its (bucket, feature, sample), slot and bag position.
        seg = torch.repeat_interleave(torch.arange(Q * F * B, device=device), new_lengths[: Q * F * B], output_size=n)
        qf = torch.div(seg, B, rounding_mode="floor")
        sample = seg - qf * B
        feature = qf.remainder(F)
        slot = self.slot_of.index_select(0, qf)
        first = (per_qf.cumsum(0) - per_qf).index_select(0, qf)
        bag = torch.arange(n, device=device) - first
        if self._has_pooled:
            rank = (nonempty.cumsum(1) - 1).view(-1).index_select(0, seg)
            bag = torch.where(self.pooled.index_select(0, slot), rank, bag)
        pos = slot * S + bag
        if self._has_pooled:
            bag_lengths = torch.zeros(T * S, dtype=torch.int32, device=device)
            bag_lengths.index_add_(0, pos, torch.ones(n, dtype=torch.int32, device=device))
        else:
            bag_lengths = (torch.arange(S, device=device).unsqueeze(0) < bags.unsqueeze(1)).to(torch.int32).view(-1)
        values = local[:n]
        features = self._features(
            values, bag_lengths, new_weights[:n] if new_weights is not None else None, S, length_per_key
        )

        # Where each bag goes: its output row, and its map row.
        out_row = torch.full((T * S,), B * F, dtype=torch.int64, device=device)
        out_row.index_copy_(0, pos, sample * F + feature)
        map_row = self.map_base.repeat_interleave(S)
        map_row.index_copy_(
            0, pos, self.map_base.index_select(0, slot) + self.map_stride.index_select(0, slot) * values.to(torch.int64)
        )
        return RoutedBatch(features, out_row.view(T, S), map_row.view(T, S), B * F, max_length)

    def _native(
        self, rows: torch.Tensor, lengths: torch.Tensor, weights: Optional[torch.Tensor], batch_size: int
    ) -> RoutedBatch:
        """The same batch from one native counting sort (``torch.ops.recdim.tier_route``)."""
        local, bag_lengths, new_weights, out_row, map_row, counts = torch.ops.recdim.tier_route(
            rows,
            lengths.contiguous(),
            weights,
            self.boundaries,
            self.slot_of,
            self.pooled,
            self.map_base,
            self.map_stride,
            batch_size,
        )
        host = counts.tolist()
        max_length, S, length_per_key = host[0], host[1], host[2:]
        features = self._features(local, bag_lengths, new_weights if weights is not None else None, S, length_per_key)
        return RoutedBatch(features, out_row, map_row, batch_size * self._F, max_length)

    def _features(
        self,
        values: torch.Tensor,
        lengths: torch.Tensor,
        weights: Optional[torch.Tensor],
        stride: int,
        length_per_key: List[int],
    ) -> KeyedJaggedTensor:
        """The tier collection's KJT: slot keys, ``stride`` bags each, ``length_per_key`` ids per slot."""
        offset_per_key = [0]
        for length in length_per_key:
            offset_per_key.append(offset_per_key[-1] + length)
        return KeyedJaggedTensor(
            keys=self._keys,
            values=values,
            lengths=lengths,
            weights=weights,
            stride=stride,
            length_per_key=length_per_key,
            offset_per_key=offset_per_key,
        )
