"""Transferability: dimensions searched with one arch (``compare.search_arch``) and retrained on others.

The grid keys shared searches by the search arch and hands the search arch's config to the experiment;
``configs/autodim_transfer_ml100k.toml`` runs, shrunk, on a tiny MovieLens 100K-layout dataset: one FM
search, retrained from a fresh initialisation on FM, NFM, PNN and AutoInt with the searched dims."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from recdim.compare.grid import Cell, expand_grid
from recdim.compare.runner import run_compare
from recdim.config import Config, load
from recdim.config.compare import CompareConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "autodim_transfer_ml100k.toml")


class FakeExperiment:
    """Records the keyword arguments each call gets."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []

    def __call__(self, cfg: Config, method: str, cr: float, seed: int, out_dir: Path, **kw: Any) -> Dict[str, Any]:
        self.calls.append({"method": method, "arch": cfg.model.arch, "cfg": cfg, **kw})
        return {"method": method, "val": {"auc": 0.7}, "test": {"auc": 0.7}, "params": 10, "bytes": 40}


def test_search_arch_validates_and_reaches_search_cells_only() -> None:
    with pytest.raises(ValueError, match="compare.search_arch"):
        CompareConfig(search_arch="transformer")
    cmp = CompareConfig(methods=("ue", "autodim", "pep"), arches=("fm", "nfm"), budgets=(2.0,), search_arch="fm")
    cells = {(c.method, c.arch): c for c in expand_grid(cmp, "dlrm")}
    assert cells[("ue", "nfm")].search_arch == "" and not cells[("ue", "nfm")].transfers
    assert cells[("autodim", "nfm")].transfers and not cells[("autodim", "fm")].transfers
    assert cells[("autodim", "nfm")].search_cell() == Cell("autodim", "fm", 2.0, 0)
    assert cells[("autodim", "nfm")].to_json()["search_arch"] == "fm"
    assert "searched on fm" in cells[("autodim", "nfm")].describe()


def test_search_dirs_are_keyed_by_the_search_arch() -> None:
    by_fm = Cell("autodim", "nfm", 2.0, 0, search_arch="fm")
    by_dlrm = Cell("autodim", "nfm", 2.0, 0, search_arch="dlrm")
    assert by_fm.search_id == "fm/searches/autodim-seed0" != by_dlrm.search_id == "dlrm/searches/autodim-seed0"
    assert by_fm.search_id == Cell("autodim", "fm", 4.0, 0).search_id  # the FM reference shares it
    assert by_fm.run_id == by_dlrm.run_id == "nfm/cr2/autodim/seed0"  # the cell is the retrained arch's


def test_runner_passes_the_search_arch_config(tmp_path: Path) -> None:
    """Search cells on another arch get the search arch's config (its own arch overrides, not the
    target's) and the search directory keyed by it; baselines and same-arch cells get no search config."""
    cmp = CompareConfig(
        methods=("ue", "autodim", "pep"),
        arches=("fm", "nfm"),
        budgets=(2.0, 4.0),
        output=str(tmp_path / "cmp"),
        search_arch="fm",
        arch_overrides={"fm": ("model.dropout=0.0",), "nfm": ("model.dropout=0.3",)},
    )
    fake = FakeExperiment()
    s = run_compare(Config(), compare=cmp, experiment=fake, prepare=False, progress=False)
    assert s.failed == {} and s.ran == 12
    runs = tmp_path / "cmp" / "runs"
    for call in fake.calls:
        transferred = call["method"] != "ue" and call["arch"] == "nfm"
        assert ("search_cfg" in call) == transferred, call["method"]
        if transferred:
            scfg = call["search_cfg"]
            assert scfg.model.arch == "fm" and scfg.model.dropout == 0.0 and call["cfg"].model.dropout == 0.3
            assert scfg.train.seed == call["cfg"].train.seed
        if call["method"] == "autodim":  # budget-free: one FM search for both arches and both budgets
            assert call["search_dir"] == runs / "fm" / "searches" / "autodim-seed0"
        else:
            assert "search_dir" not in call  # PEP searches per budget, inside its cell
    record = json.loads((runs / "nfm/cr2/autodim/seed0/cell.json").read_text())
    assert record["cell"]["search_arch"] == "fm"


def test_transfer_needs_a_retrainable_setting(tmp_path: Path) -> None:
    from recdim.compare.grid import override_config
    from recdim.pipeline import run_experiment, transfer_config

    base = Config()
    fm, nfm = override_config(base, ['model.arch="fm"']), override_config(base, ['model.arch="nfm"'])
    assert transfer_config(nfm, fm).prune.init == "fresh" and transfer_config(fm, fm) is fm
    with pytest.raises(ValueError, match="keep K"):
        transfer_config(nfm, override_config(fm, ["model.embedding_dim=8"]))
    with pytest.raises(ValueError, match="retrain"):
        transfer_config(override_config(nfm, ['prune.retrain="none"']), fm)
    done = tmp_path / "search"
    done.mkdir()
    (done / "results.json").write_text(json.dumps({"wall_time_s": 0.0}))
    with pytest.raises(ValueError, match="cannot transfer"):
        run_experiment(nfm, "autodim_s", 2.0, 0, tmp_path / "cell", search_dir=done, search_cfg=fm)


def write_ml100k(root: Path, users: int = 60, items: int = 80, rows: int = 5000, seed: int = 0) -> Path:
    """A tiny dataset in the MovieLens 100K layout (``u.data``, ``u.user``, ``u.item``) with planted
    user / item factors, so that the ratings carry signal."""
    g = np.random.default_rng(seed)
    pu, qi = g.normal(size=(users, 3)), g.normal(size=(items, 3))
    root.mkdir(parents=True, exist_ok=True)
    u, i = g.integers(0, users, rows), g.integers(0, items, rows)
    score = (pu[u] * qi[i]).sum(1) + 0.5 * g.normal(size=rows)
    rating = np.clip(np.digitize(score, [-1.5, -0.5, 0.5, 1.5]) + 1, 1, 5)
    lines = [f"{a + 1}\t{b + 1}\t{r}\t{880000000 + k}" for k, (a, b, r) in enumerate(zip(u, i, rating))]
    (root / "u.data").write_text("\n".join(lines) + "\n")
    jobs = ["student", "writer", "other", "engineer"]
    (root / "u.user").write_text(
        "".join(f"{a + 1}|{20 + a % 30}|{'MF'[a % 2]}|{jobs[a % 4]}|{10000 + a % 7}\n" for a in range(users))
    )
    flags = lambda b: "|".join("1" if (b + j) % 7 == 0 else "0" for j in range(19))  # noqa: E731
    (root / "u.item").write_bytes(
        "".join(f"{b + 1}|Film {b} (1995)|01-Jan-1995||http://x/{b}|{flags(b)}\n" for b in range(items)).encode(
            "latin-1"
        )
    )
    return root


def test_transfer_config_runs_shrunk(tmp_path: Path) -> None:
    """The shipped transfer config on tiny data: one FM AutoDim search; FM, NFM, PNN and AutoInt each
    retrain its dims (the same per field, stepped to the budget), on their own arch class, from a fresh
    initialisation."""
    from recdim.models.autoint import AutoIntArch
    from recdim.models.fm import FMArch
    from recdim.models.nfm import NFMArch
    from recdim.models.pnn import PNNArch
    from recdim.prune.store import read_pruned
    from recdim.retrain.tiers import tiered_session

    shipped = load(CONFIG)
    assert shipped.compare.search_arch == "fm" and set(shipped.compare.arches) == {"fm", "nfm", "pnn", "autoint"}
    assert "autodim" in shipped.compare.methods
    data = write_ml100k(tmp_path / "ml-100k")
    sets = (
        f"prepare.input={data}",
        f"prepare.output={tmp_path / 'prepared'}",
        "model.embedding_dim=16",
        "model.mlp=[8]",
        "train.epochs=2",
        "train.max_steps=24",
        "train.batch_size=128",
        "search.autodim.candidates=[4, 8, 16]",
        "search.autodim.pretrain_epochs=0",
        "search.autodim.update_every=2",
        "search.autodim.tau_decay=0.02",
        "search.split.fraction=0.2",
        'compare.methods=["autodim"]',
        "compare.budgets=[2.0]",
        "compare.seeds=[0]",
    )
    cfg = load(CONFIG, sets)
    out = tmp_path / "cmp"
    summary = run_compare(cfg, out_dir=out, progress=False)
    assert summary.failed == {} and summary.ran == 4
    runs = out / "runs"
    assert sorted(p.relative_to(runs).as_posix() for p in runs.glob("*/searches/*")) == ["fm/searches/autodim-seed0"]
    search_dir = runs / "fm" / "searches" / "autodim-seed0"
    search = json.loads((search_dir / "results.json").read_text())
    assert search["config"]["model"]["arch"] == "fm"
    own = json.loads((search_dir / "autodim_dims.json").read_text())["dims"]
    classes = {"fm": FMArch, "nfm": NFMArch, "pnn": PNNArch, "autoint": AutoIntArch}
    dims = None
    for arch, cls in classes.items():
        run = runs / arch / "cr2" / "autodim" / "seed0"
        result = json.loads((run / "cell.json").read_text())["result"]
        assert (result["search_arch"], result["arch"]) == ("fm", arch)
        assert result["dims"]["own_dims"] == own and result["cr"] >= 2.0 * 0.99
        dims = dims or result["dims"]["dims"]
        assert result["dims"]["dims"] == dims  # the FM-searched dims, on every arch
        assert result["dims"]["init"] == "fresh" and 0.0 < result["test"]["auc"] < 1.0
        retrain = json.loads((run / "retrain" / "results.json").read_text())
        assert retrain["config"]["model"]["arch"] == arch
        assert retrain["config"]["prune"]["init"] == ("method" if arch == "fm" else "fresh")
        (entry,) = json.loads((run / "pruned" / "prune.json").read_text())["pruned"]
        pruned = run / "pruned" / entry["dir"]
        stored = read_pruned(pruned)
        assert stored.values is None and stored.arch_state is None  # nothing of FM's weights carried over
        assert {f: set(m.sum(1).tolist()) for f, m in stored.masks.items()} == {f: {d} for f, d in dims.items()}
        cell_cfg = load(CONFIG, (*sets, f'model.arch="{arch}"', *shipped.compare.arch_overrides.get(arch, ())))
        cell_cfg = dataclasses.replace(cell_cfg, prune=dataclasses.replace(cell_cfg.prune, init="fresh"))
        session, _, _ = tiered_session(cell_cfg, pruned, None)
        assert type(session.model.arch) is cls
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert sorted(r["arch"] for r in rows) == sorted(classes)
