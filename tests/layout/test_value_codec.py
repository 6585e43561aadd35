"""Value codecs: float32 exact, float16 within half precision, int8 row-wise within half a step."""

import pytest
import torch

from recdim.layout.value_codec import decode_values, encode_values, tensor_specs


def jagged(seed=0, rows=200, K=16, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, K + 1, (rows,), generator=g)
    return torch.randn(int(lengths.sum()), generator=g) * scale, lengths


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_specs_match_what_is_stored(dtype):
    v, lengths = jagged()
    stored = encode_values(v, lengths, dtype)
    specs = tensor_specs(dtype, v.numel(), lengths.numel())
    assert {k: (t.dtype, list(t.shape)) for k, t in stored.items()} == specs


def test_float32_exact_float16_rounded():
    v, lengths = jagged()
    assert torch.equal(decode_values(encode_values(v, lengths, "float32"), lengths, "float32"), v)
    back = decode_values(encode_values(v, lengths, "float16"), lengths, "float16")
    assert torch.equal(back, v.half().float())


@pytest.mark.parametrize("scale", [1e-4, 1.0, 300.0])
def test_int8_error_is_at_most_half_a_step(scale):
    v, lengths = jagged(scale=scale)
    stored = encode_values(v, lengths, "int8")
    back = decode_values(stored, lengths, "int8")
    step = torch.repeat_interleave(stored["scale"].float(), lengths)
    assert bool(((back - v).abs() <= 0.5 * step * (1 + 1e-3) + 1e-7 * v.abs()).all())


def test_int8_constant_rows_and_range_errors():
    lengths = torch.tensor([3, 1])
    v = torch.tensor([0.5, 0.5, 0.5, -2.0])
    assert torch.equal(decode_values(encode_values(v, lengths, "int8"), lengths, "int8"), v)
    with pytest.raises(ValueError, match="t_big.*float16"):
        encode_values(torch.tensor([1e6]), torch.tensor([1]), "int8", where="t_big")
    with pytest.raises(ValueError, match="unknown value dtype"):
        encode_values(v, lengths, "bf16")
