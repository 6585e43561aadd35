"""Distinct ids of a single-valued batch: each (feature, id) once, and an expansion back to every bag."""

from __future__ import annotations

import pytest
import torch

from recdim.modules.unique_lookup import RADIX_ROWS, expand_rows, unique_ids

SIZES = [7, 1, 30]


def batch_of(seed: int, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randint(0, n, (batch,), generator=g) for n in SIZES])


def row_offsets(batch: int) -> torch.Tensor:
    starts = torch.tensor([sum(SIZES[:i]) for i in range(len(SIZES))])
    return starts.repeat_interleave(batch)


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_distinct_ids_and_expansion(batch: int) -> None:
    values = batch_of(batch, batch)
    workspace = torch.full((sum(SIZES),), -7, dtype=torch.int64)  # stale contents are never read
    u = unique_ids(values.to(torch.int32), row_offsets(batch), batch, workspace)
    per_feature = values.view(len(SIZES), batch)
    for g, ids in enumerate(u.per_feature()):
        assert sorted(ids.tolist()) == sorted(set(per_feature[g].tolist()))
        assert int(u.counts[g]) == ids.numel()
    assert u.width == int(u.counts.max()) and u.num_unique == sum(len(set(r.tolist())) for r in per_feature)
    # the deduplicated lookup: bag j of feature g holds its j-th distinct id; rows of any width expand back
    for stride in (u.width, u.width + 3):
        lengths = u.lengths(stride).view(len(SIZES), stride)
        assert lengths.tolist() == [[1] * int(c) + [0] * (stride - int(c)) for c in u.counts]
    table = torch.randn(sum(SIZES), 4)  # a row per (feature, id)
    starts = [sum(SIZES[:i]) for i in range(len(SIZES))]
    deduped = torch.zeros(u.width, len(SIZES), 4)
    for g, ids in enumerate(u.per_feature()):
        deduped[: ids.numel(), g] = table[ids + starts[g]]
    expanded = deduped.view(-1, 4)[u.expand].view(batch, len(SIZES), 4)
    expected = table[(per_feature + torch.tensor(starts).unsqueeze(1)).t()]
    assert torch.equal(expanded, expected)


def test_example_in_the_docstring() -> None:
    offsets = torch.tensor([0, 10]).repeat_interleave(3)
    u = unique_ids(torch.tensor([3, 3, 1, 0, 0, 0]), offsets, 3, torch.empty(20, dtype=torch.long))
    assert u.ids.tolist() == [3, 1, 0] and u.counts.tolist() == [2, 1] and u.width == 2
    assert u.expand.tolist() == [0, 1, 0, 1, 2, 1]


@pytest.mark.parametrize("num_rows,n,width", [(7, 50, 4), (2_850, 16_384, 16), (40_000, 5_000, 3), (5, 0, 2)])
def test_expand_rows_gradient_equals_index_select(num_rows: int, n: int, width: int) -> None:
    """Same output, and the same gradient bit for bit (each row's repeats summed in their order; rows no
    lookup reads get zeros), on the radix path and on the index_add fallback (more than RADIX_ROWS rows)."""
    g = torch.Generator().manual_seed(num_rows)
    index = (torch.rand(n, generator=g) ** 3 * num_rows).long()
    grad = torch.randn(n, width, generator=g)
    rows = torch.randn(num_rows, width, generator=g, requires_grad=True)
    ref_rows = rows.detach().clone().requires_grad_(True)
    out = expand_rows(rows, index)
    ref = ref_rows.index_select(0, index)
    assert torch.equal(out, ref)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(rows.grad, ref_rows.grad)
    assert (num_rows > RADIX_ROWS) == (num_rows == 40_000)
