"""Bit packing: roundtrips at every width, one valid encoding (set padding bits refused)."""

import pytest
import torch

from recdim.layout.bitpack import bits_for, pack_bools, pack_uint, packed_size, unpack_bools, unpack_uint


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000])
def test_bools_roundtrip(n):
    flags = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.3
    packed = pack_bools(flags)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(n, 1)
    assert torch.equal(unpack_bools(packed, n), flags)


def test_bit_order_is_lsb_first():
    assert pack_bools(torch.tensor([True, False, True])).tolist() == [5]
    assert pack_uint(torch.tensor([3, 0, 5]), 3).tolist() == [3 | (5 << 6) & 0xFF, 5 >> 2]


@pytest.mark.parametrize("bits", [0, 1, 3, 6, 8, 13, 32])
def test_uint_roundtrip(bits):
    g = torch.Generator().manual_seed(bits)
    v = (
        torch.randint(0, 1 << bits, (101,), generator=g, dtype=torch.int64)
        if bits
        else torch.zeros(101, dtype=torch.int64)
    )
    packed = pack_uint(v, bits)
    assert packed.numel() == packed_size(101, bits)
    assert torch.equal(unpack_uint(packed, 101, bits), v)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="must lie in"):
        pack_uint(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="padding bits"):
        unpack_bools(torch.tensor([0b1000], dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="expected uint8"):
        unpack_bools(torch.zeros(2, dtype=torch.uint8), 3)
    assert bits_for(0) == 0 and bits_for(1) == 1 and bits_for(15) == 4 and bits_for(16) == 5
