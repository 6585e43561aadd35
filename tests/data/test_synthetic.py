"""The synthetic generator: determinism, shape, planted signal."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recdim.config import PrepareConfig, SyntheticConfig
from recdim.data.preprocess import prepare
from recdim.data.readers import BadRowBudget
from recdim.data.synthetic import BLOCK_ROWS, SyntheticGenerator, SyntheticReader

SMALL = SyntheticConfig(
    rows=30_000,
    num_dense=2,
    cardinalities=(50, 50, 50, 50),
    strengths=(1.0, 1.0, 0.0, 0.0),
    ranks=(4, 2, 2, 2),
    teacher_dim=4,
    seed=7,
)


def auc(score: np.ndarray, label: np.ndarray) -> float:
    ranks = pd.Series(score).rank().to_numpy()
    pos = label == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_deterministic_by_seed() -> None:
    a, b = SyntheticGenerator(SMALL), SyntheticGenerator(SMALL)
    for x, y in zip(a.block(0), b.block(0)):
        np.testing.assert_array_equal(x, y)
    other = SyntheticGenerator(SyntheticConfig(**{**SMALL.__dict__, "seed": 8}))
    assert (other.block(0)[0] != a.block(0)[0]).any()


def test_rows_shape_and_chunking() -> None:
    cfg = SyntheticConfig(rows=BLOCK_ROWS + 10, num_dense=3, cardinalities=(5, 9), strengths=(1.0, 0.0), ranks=(1, 1))
    reader = SyntheticReader(cfg)
    assert [f.name for f in reader.schema_hint.fields] == ["I1", "I2", "I3", "C1", "C2"]
    small = list(reader.chunks(30_000, BadRowBudget(0)))
    big = list(reader.chunks(10**6, BadRowBudget(0)))
    assert max(len(c) for c in small) <= 30_000 and sum(len(c) for c in small) == cfg.rows
    lines = np.concatenate([c.lines for c in small])
    np.testing.assert_array_equal(lines, np.arange(1, cfg.rows + 1))
    frame = pd.concat([c.features for c in small], ignore_index=True)
    pd.testing.assert_frame_equal(frame, pd.concat([c.features for c in big], ignore_index=True))
    dense = frame[["I1", "I2", "I3"]].to_numpy()
    assert np.nanmin(dense) >= 0 and 0.02 < np.isnan(dense).mean() < 0.08
    assert np.nanmax(dense) > 50 * np.nanmedian(dense)  # heavy tail
    assert frame["C1"].nunique() <= 5 and frame["C1"].str.fullmatch("[0-9a-f]{8}").all()
    counts = frame["C2"].value_counts().to_numpy()
    assert counts[0] > 3 * counts[-1]  # Zipf popularity


def test_positive_rate_and_planted_signal(tmp_path: Path) -> None:
    out = prepare(PrepareConfig(source="synthetic", output=str(tmp_path / "s"), synthetic=SMALL, min_count=1))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["planted"]["C1"] == {"strength": 1.0, "rank": 4}
    assert meta["planted"]["C4"] == {"strength": 0.0, "rank": 2}
    assert set(meta["planted"]) == {"C1", "C2", "C3", "C4", "I1", "I2"}
    assert meta["source"] == {"reader": "synthetic", "rows": SMALL.rows, "seed": SMALL.seed}
    train = pq.read_table(out / "train").to_pandas()
    test = pq.read_table(out / "test").to_pandas()
    assert abs(train["label"].mean() - 0.25) < 0.03
    # target encoding fitted on train, scored on test: strong fields predict, noise fields do not
    scores = {}
    for name in ("C1", "C2", "C3", "C4"):
        stats = train.groupby(name)["label"].agg(["sum", "count"])
        enc = (stats["sum"] + 1) / (stats["count"] + 4)
        scores[name] = auc(test[name].map(enc).fillna(0.25).to_numpy(), test["label"].to_numpy())
    assert scores["C1"] > 0.56 and scores["C2"] > 0.56, scores
    assert abs(scores["C3"] - 0.5) < 0.04 and abs(scores["C4"] - 0.5) < 0.04, scores


def test_invalid_config() -> None:
    with pytest.raises(ValueError, match="equal length"):
        SyntheticGenerator(SyntheticConfig(cardinalities=(3, 4), strengths=(1.0,), ranks=(1, 1)))
    with pytest.raises(ValueError, match=">= 1"):
        SyntheticGenerator(SyntheticConfig(cardinalities=(3,), strengths=(1.0,), ranks=(0,)))
