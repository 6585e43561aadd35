import pytest
import torch

from recdim.layout.masks import kept_for_cr, magnitude_masks, mask_stats, nonzero_masks, prefix_masks


def test_magnitude_masks_keep_exactly_the_cr_count_even_with_ties():
    values = {"a": torch.tensor([[1.0, -1.0], [0.5, 0.0]]), "b": torch.tensor([[1.0, 2.0, -3.0, 0.5]]).view(2, 2)}
    for cr, kept in [(1.0, 8), (2.0, 4), (8 / 3, 3), (4.0, 2), (8.0, 1)]:
        masks = magnitude_masks(values, cr=cr)
        assert mask_stats(masks)["kept"] == kept == kept_for_cr(8, cr)
    m = magnitude_masks(values, cr=2.0)  # |-3|, |2|, then the first two (table order) of the three |1|s
    assert m["b"].tolist() == [[False, True], [True, False]]
    assert m["a"].tolist() == [[True, True], [False, False]]


def test_magnitude_masks_are_the_largest_entries():
    torch.manual_seed(0)
    values = {"a": torch.randn(50, 8), "b": torch.randn(30, 8)}
    masks = magnitude_masks(values, cr=5.0)
    kept = torch.cat([values[k][masks[k]].abs() for k in values])
    dropped = torch.cat([values[k][~masks[k]].abs() for k in values])
    assert kept.min() >= dropped.max()


def test_eps_and_validation():
    values = {"a": torch.tensor([[0.1, -0.3], [0.2, 0.0]])}
    assert magnitude_masks(values, eps=0.2)["a"].tolist() == [[False, True], [True, False]]
    with pytest.raises(ValueError):
        magnitude_masks(values)
    with pytest.raises(ValueError):
        magnitude_masks(values, cr=0.5)


def test_prefix_and_nonzero_masks():
    m = prefix_masks({"a": 3}, {"a": 2}, 4)["a"]
    assert m.tolist() == [[True, True, False, False]] * 3
    with pytest.raises(ValueError):
        prefix_masks({"a": 3}, {"a": 5}, 4)
    assert nonzero_masks({"a": torch.tensor([[0.0, 1.0]])})["a"].tolist() == [[False, True]]
