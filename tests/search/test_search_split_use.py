"""Architecture steps learn on the search split carved from train, never on validation; PEP carves none."""

from pathlib import Path

import numpy as np
import pytest

from recdim.config import load
from recdim.data.prepared import PreparedDataset
from recdim.data.preprocess import prepare
from recdim.search.method import create
from recdim.search.run import run_search

ROOT = Path(__file__).resolve().parents[2]
SETS = ("train.epochs=1", "train.max_steps=3", "train.batch_size=128", "train.progress=false", "train.device=cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "data"
    cfg = load(str(ROOT / "configs" / "demo.toml"), (f"prepare.output={out}", "prepare.synthetic.rows=3000"))
    prepare(cfg.prepare)
    return out


@pytest.mark.parametrize("method", ["dnis", "autodim"])
def test_bilevel_searches_read_the_search_split(data, tmp_path, method):
    more = ("search.autodim.candidates=[4, 8, 16]", "search.autodim.pretrain_steps=1") if method == "autodim" else ()
    cfg = load(
        str(ROOT / "configs" / "demo.toml"), (f"prepare.output={data}", *SETS, "search.split.fraction=0.2", *more)
    )
    m = create(method, cfg)
    assert m.search_split() == cfg.search.split
    results = run_search(cfg, tmp_path / "run", method=method)
    rows = results["split_rows"]
    train = len(PreparedDataset(cfg.data_path).load_split("train", cfg.data.features or None))
    assert rows["train"] + rows["search"] == train and 0.1 * train < rows["search"] < 0.3 * train
    assert rows["val"] > 0


def test_search_split_rows_are_the_carved_ones(data, tmp_path):
    cfg = load(str(ROOT / "configs" / "demo.toml"), (f"prepare.output={data}", *SETS))
    m = create("dnis", cfg)
    from recdim.train.run import open_session

    ds = PreparedDataset(cfg.data_path)
    session = open_session(
        cfg, m.provider_factory(ds, ds.feature_names(cfg.data.features)), m.hooks, search_split=m.search_split()
    )
    hook_data = m.hook.val_batches.data
    assert hook_data is session.splits["search"]
    assert len(hook_data) != len(session.splits["val"]) or not np.array_equal(
        hook_data.labels, session.splits["val"].labels
    )


def test_single_level_and_pep_carve_nothing(data):
    cfg = load(str(ROOT / "configs" / "demo.toml"), (f"prepare.output={data}", *SETS, "search.dnis.single_level=true"))
    assert create("dnis", cfg).search_split() is None
    assert create("pep", cfg).search_split() is None
