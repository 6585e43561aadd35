"""Packing small unsigned integers (and booleans) into bytes, and back.

Values are laid out little-endian in bit order: value ``i`` occupies bits ``[i * b, (i + 1) * b)`` of the
stream, bit ``k`` of the stream is bit ``k % 8`` of byte ``k // 8``. The last byte is padded with zero
bits; :func:`unpack_uint` refuses a stream whose padding bits are set, so a packed tensor has exactly one
valid encoding.

Example::

    packed = pack_uint(torch.tensor([3, 0, 5]), bits=3)      # tensor([195, 2], dtype=torch.uint8)
    unpack_uint(packed, n=3, bits=3)                          # tensor([3, 0, 5])
"""

from __future__ import annotations

import torch

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def packed_size(n: int, bits: int) -> int:
    """Bytes holding ``n`` values of ``bits`` bits: ``ceil(n * bits / 8)``."""
    return (n * bits + 7) // 8


def bits_for(max_value: int) -> int:
    """The fewest bits holding every value in ``[0, max_value]`` (0 when ``max_value == 0``)."""
    if max_value < 0:
        raise ValueError(f"max_value must be >= 0, got {max_value}")
    return int(max_value).bit_length()


def pack_bools(flags: torch.Tensor) -> torch.Tensor:
    """[n] bool (any shape, flattened row-major) -> [ceil(n / 8)] uint8, one bit per flag.

    Example::

        pack_bools(torch.tensor([True, False, True]))        # tensor([5], dtype=torch.uint8)
    """
    flat = flags.reshape(-1).to(torch.uint8).cpu()
    n = flat.numel()
    pad = (-n) % 8
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.uint8)])
    return (flat.view(-1, 8) << _SHIFTS).sum(dim=1, dtype=torch.uint8)


def unpack_bools(packed: torch.Tensor, n: int) -> torch.Tensor:
    """[ceil(n / 8)] uint8 -> [n] bool (the inverse of :func:`pack_bools`).

    Raises:
        ValueError: ``packed`` has the wrong size or dtype, or a padding bit past ``n`` is set.
    """
    _check(packed, packed_size(n, 1))
    bits = ((packed.unsqueeze(1) >> _SHIFTS) & 1).reshape(-1)
    if bool(bits[n:].any()):
        raise ValueError(f"packed bits: padding bits past the {n} flags are set")
    return bits[:n].to(torch.bool)


def pack_uint(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[n] integers in ``[0, 2**bits)`` -> [ceil(n * bits / 8)] uint8.

    Args:
        values: [n] any integer dtype.
        bits: bits per value, 0 to 32 (0: every value is 0 and nothing is stored).

    Returns:
        Tensor: uint8, the values' bits one after another (see the module docstring).

    Raises:
        ValueError: a value does not fit in ``bits`` bits.
    """
    if not 0 <= bits <= 32:
        raise ValueError(f"bits must be in [0, 32], got {bits}")
    v = values.reshape(-1).to(torch.int64).cpu()
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= (1 << bits)):
        raise ValueError(f"values must lie in [0, 2**{bits}), got [{int(v.min())}, {int(v.max())}]")
    if bits == 0:
        return torch.zeros(0, dtype=torch.uint8)
    planes = (v.unsqueeze(1) >> torch.arange(bits, dtype=torch.int64)) & 1  # [n, bits], LSB first
    return pack_bools(planes.to(torch.bool))


def unpack_uint(packed: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """[ceil(n * bits / 8)] uint8 -> [n] int64 (the inverse of :func:`pack_uint`).

    Raises:
        ValueError: ``packed`` has the wrong size or dtype, or its padding bits are set.
    """
    if not 0 <= bits <= 32:
        raise ValueError(f"bits must be in [0, 32], got {bits}")
    if bits == 0:
        _check(packed, 0)
        return torch.zeros(n, dtype=torch.int64)
    planes = unpack_bools(packed, n * bits).view(n, bits).to(torch.int64)
    return (planes << torch.arange(bits, dtype=torch.int64)).sum(dim=1)


def _check(packed: torch.Tensor, size: int) -> None:
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != size:
        raise ValueError(
            f"packed bits: expected uint8[{size}], got {str(packed.dtype).replace('torch.', '')}{list(packed.shape)}"
        )
