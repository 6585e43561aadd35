"""Kept dims per field against planted ranks: both summaries, Spearman with signal and cardinality, noise."""

import numpy as np
import pytest
import torch

from recdim.config import Config, PrepareConfig, SyntheticConfig
from recdim.layout.field_signal import field_dims, planted_signal, render_signal_markdown, signal_summary


def test_field_dims_row_mean_and_frequency_weighted():
    masks = {"a": torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)}
    out = field_dims(masks, {"a": np.array([6, 3, 1])})
    assert out["a"]["rows"] == 3
    assert out["a"]["row_mean"] == pytest.approx(4 / 3)
    assert out["a"]["freq_weighted"] == pytest.approx((6 * 3 + 3 * 1) / 10)
    with pytest.raises(ValueError, match="'a': 2 counts for 3 mask rows"):
        field_dims(masks, {"a": np.array([1, 2])})


def test_signal_summary_ranks_fields_and_finds_noise():
    fields = ["C1", "C2", "C3", "C4", "C5"]
    ranks, strengths, cards = [8, 4, 2, 2, 2], [1.0, 1.0, 1.0, 0.0, 0.0], [10, 1000, 100, 5000, 50]
    dims = {f: {"row_mean": d, "freq_weighted": d} for f, d in zip(fields, [8.0, 5.0, 3.0, 0.5, 1.0])}
    s = signal_summary(dims, fields, ranks, strengths, cards)
    assert s["freq_weighted"]["spearman_signal"] > 0.95  # the two noise fields tie at signal 0
    assert s["freq_weighted"]["noise_among_fewest"] == 2 and s["freq_weighted"]["noise_fields"] == 2
    assert s["row_mean"]["spearman_cardinality"] < 0
    dims["C4"] = {"row_mean": 9.0, "freq_weighted": 9.0}  # a noise field with the most dims
    s = signal_summary(dims, fields, ranks, strengths, cards)
    assert s["freq_weighted"]["noise_among_fewest"] == 1 and s["freq_weighted"]["spearman_signal"] < 0.5
    # ties: a signal field (C3) and both noise fields keep 0 dims; both noise fields count, in any field order
    dims.update({f: {"row_mean": 0.0, "freq_weighted": 0.0} for f in ("C3", "C4", "C5")})
    tied = signal_summary(dims, fields, ranks, strengths, cards)
    assert tied["freq_weighted"]["noise_among_fewest"] == 2
    dims["C5"] = {"row_mean": 0.5, "freq_weighted": 0.5}  # now two fields keep strictly fewer than C5
    assert signal_summary(dims, fields, ranks, strengths, cards)["freq_weighted"]["noise_among_fewest"] == 1
    same = {f: {"row_mean": 4.0, "freq_weighted": 4.0} for f in fields}  # a uniform table ranks nothing
    assert signal_summary(same, fields, ranks, strengths, cards)["freq_weighted"]["noise_among_fewest"] is None
    text = render_signal_markdown(s, "dnis CR 4")
    assert "| C4 | noise | 0 | 5000 | 9.00 | 9.00 |" in text and "1 of 2 noise fields" in text


def test_planted_signal_only_for_synthetic_data():
    syn = SyntheticConfig(cardinalities=(10, 20, 30), strengths=(1.0, 0.5, 0.0), ranks=(4, 2, 1))
    cfg = Config(prepare=PrepareConfig(source="synthetic", synthetic=syn))
    dims = {f"C{i}": {"row_mean": float(4 - i), "freq_weighted": float(4 - i)} for i in (1, 2, 3)}
    s = planted_signal(cfg, dims)
    assert s is not None and s["freq_weighted"]["spearman_signal"] == pytest.approx(1.0)
    assert planted_signal(cfg, None) is None
    other = Config(prepare=PrepareConfig(source="movielens", input="x"))
    assert planted_signal(other, dims) is None
