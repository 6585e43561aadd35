"""scatter_columns equals a plain per-element loop, forward and backward; the sink gets nothing back."""

import pytest
import torch

from recdim.modules.tier_scatter import scatter_columns


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_scatter_matches_loop_and_sink_gets_zero_gradient(dtype):
    g = torch.Generator().manual_seed(0)
    size = 30
    index = torch.randint(0, size + 1, (7, 5), generator=g).to(dtype)  # index == size: the sink
    index[0, 0] = size
    values = torch.randn(7, 5, generator=g, requires_grad=True)
    out = scatter_columns(values, index, size)
    ref = torch.zeros(size)
    for e in range(index.numel()):
        i = int(index.view(-1)[e])
        if i < size:
            ref[i] += values.detach().view(-1)[e]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    proj = torch.randn(size, generator=g)
    (out * proj).sum().backward()
    expect = torch.where(index < size, proj[index.clamp(max=size - 1).long()], torch.zeros(()))
    torch.testing.assert_close(values.grad, expect, rtol=0, atol=0)


def test_scatter_checks_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        scatter_columns(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.int64), 10)
