"""AutoDim at a budget: the preferred candidates when they fit, else the cheapest steps down in weight."""

import pytest

from recdim.search.dims_at_budget import dims_at_budget

ROWS = {"a": 100, "b": 10, "c": 50}
CANDIDATES = {"a": [4, 8, 16], "b": [16, 8, 4], "c": [4, 8, 16]}
WEIGHTS = {"a": [0.2, 0.3, 0.5], "b": [0.1, 0.3, 0.6], "c": [0.1, 0.1, 0.8]}  # b's order: [16, 8, 4]


def cost(dims):
    return sum(ROWS[f] * d for f, d in dims.items())


def test_preferred_dims_when_they_fit():
    own = {"a": 16, "b": 4, "c": 16}
    assert dims_at_budget(ROWS, CANDIDATES, WEIGHTS, cost(own)) == own
    assert dims_at_budget(ROWS, CANDIDATES, WEIGHTS, 10**9) == own  # never grown past the preferred dim


@pytest.mark.parametrize("budget", [2000, 1500, 1000, 800, 640])
def test_meets_the_budget_by_the_cheapest_steps(budget):
    dims = dims_at_budget(ROWS, CANDIDATES, WEIGHTS, budget)
    assert cost(dims) <= budget
    assert all(d in CANDIDATES[f] for f, d in dims.items())
    # a (weights 0.2/0.3/0.5 over 100 rows) gives up less log-weight per parameter than c (0.1/0.1/0.8).
    if budget == 2000:
        assert dims == {"a": 8, "b": 4, "c": 16}


def test_a_budget_below_the_smallest_candidates_is_an_error():
    with pytest.raises(ValueError, match="below AutoDim's smallest candidates"):
        dims_at_budget(ROWS, CANDIDATES, WEIGHTS, 4 * 160 - 1)
