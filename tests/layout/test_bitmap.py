"""Rank / select on the kept-row bitmap against a plain cumulative count."""

import pytest
import torch

from recdim.layout.bitmap import RankBitmap


@pytest.mark.parametrize("n", [0, 1, 8, 13, 4097])
def test_rank_and_select_match_a_cumulative_count(n):
    flags = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.4
    bm = RankBitmap.from_bools(flags)
    assert bm.count == int(flags.sum()) and bm.nbytes == (n + 7) // 8
    ids = torch.arange(n + 1)
    want = torch.cat([torch.zeros(1, dtype=torch.int64), flags.to(torch.int64).cumsum(0)])
    assert torch.equal(bm.rank(ids), want)
    kept = torch.nonzero(flags).squeeze(1)
    assert torch.equal(bm.set_ids(), kept)
    assert torch.equal(bm.select(torch.arange(kept.numel())), kept)
    assert torch.equal(bm.rank(kept), torch.arange(kept.numel()))


def test_rebuilt_from_bytes():
    bm = RankBitmap.from_bools(torch.tensor([True, False, False, True, True]))
    again = RankBitmap(bm.bits.clone(), 5)
    assert torch.equal(again.bools(), bm.bools())
    with pytest.raises(ValueError, match="padding"):
        RankBitmap(torch.tensor([0xFF], dtype=torch.uint8), 5)
