"""Subset ranks: every subset of a small K roundtrips, ranks are dense in [0, C(K, k)), sizes are the code's."""

import itertools
import math

import pytest
import torch

from recdim.layout.subset_rank import pack_ranks, packed_rank_bytes, rank_bits, unpack_ranks


def test_every_subset_of_six_roundtrips():
    K = 6
    rows = [torch.tensor([c in s for c in range(K)]) for k in range(K + 1) for s in itertools.combinations(range(K), k)]
    mask = torch.stack(rows)
    assert torch.equal(unpack_ranks(pack_ranks(mask), mask.sum(1), K), mask)
    assert rank_bits(torch.arange(K + 1), K).tolist() == [math.ceil(math.log2(math.comb(K, k))) for k in range(K + 1)]


@pytest.mark.parametrize("K", [1, 16, 64])
def test_random_masks_roundtrip_below_a_bit_per_slot_when_sparse(K):
    g = torch.Generator().manual_seed(K)
    mask = torch.rand(2000, K, generator=g) < 0.1
    packed = pack_ranks(mask)
    assert packed.numel() == packed_rank_bytes(mask.sum(1), K)
    assert torch.equal(unpack_ranks(packed, mask.sum(1), K), mask)
    if K > 1:
        assert packed.numel() < mask.numel() / 8 / 1.5


def test_a_rank_out_of_range_is_refused():
    # K = 4, k = 3: C(4, 3) = 4 sets in 2 bits; k = 2: 6 sets in 3 bits, rank 7 is invalid.
    with pytest.raises(ValueError, match="rank"):
        unpack_ranks(torch.tensor([7], dtype=torch.uint8), torch.tensor([2]), 4)
