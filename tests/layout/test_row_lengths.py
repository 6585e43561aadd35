"""Kept widths stored packed or as runs: the smaller one, and exact roundtrips."""

import pytest
import torch

from recdim.layout.row_lengths import decode_lengths, encode_lengths


def roundtrip(values, bits):
    kind, tensors = encode_lengths(values, bits)
    runs = tensors["lengths.run_ends"].numel() if kind == "runs" else 0
    return kind, decode_lengths(kind, tensors, values.numel(), bits, runs)


def test_blocked_widths_become_runs_and_random_ones_stay_packed():
    blocked = torch.repeat_interleave(torch.tensor([15, 7, 3, 0]), torch.tensor([100, 300, 900, 2000]))
    kind, back = roundtrip(blocked, 4)
    assert kind == "runs" and torch.equal(back, blocked)
    noisy = torch.randint(0, 16, (500,), generator=torch.Generator().manual_seed(0))
    kind, back = roundtrip(noisy, 4)
    assert kind == "packed" and torch.equal(back, noisy)
    kind, back = roundtrip(torch.zeros(0, dtype=torch.int64), 4)
    assert back.numel() == 0


def test_bad_runs_are_refused():
    values = torch.repeat_interleave(torch.tensor([1, 2]), torch.tensor([100, 200]))
    kind, tensors = encode_lengths(values, 2)
    assert kind == "runs"
    for ends in ([100, 299], [0, 300], [200, 100]):
        bad = dict(tensors, **{"lengths.run_ends": torch.tensor(ends, dtype=torch.int32)})
        with pytest.raises(ValueError, match="run_ends"):
            decode_lengths(kind, bad, 300, 2, 2)
