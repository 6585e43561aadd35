"""Numerical fields under the dimension searches: a tiny Criteo file prepared with per-field numeric modes
(``prepare.numerical_fields``), then short DNIS and PEP searches and prunes. Bucketized and weighted
numerical fields are embedded ids like the categorical ones (a weighted field is one id whose vector is
scaled by the value), so they sit in the searched provider and get pruned dims; dense ones stay outside it."""

import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from safetensors.torch import load_file

from recdim.cli import main
from recdim.data.prepared import PreparedDataset
from recdim.data.schema import FieldKind

ROWS = 1200
MODES = {"I1": "weighted", "I2": "weighted", "I3": "dense", "I4": "bucketize"}  # I5..I13 take the default


def tiny_criteo(path: Path) -> Path:
    """Criteo rows (label, 13 integers, 26 hashed categories) whose label follows I1, I4 and C1."""
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(ROWS):
        ints = rng.integers(0, 50, 13)
        cats = rng.integers(0, 6, 26)
        logit = 0.08 * ints[0] - 0.05 * ints[3] + (1.5 if cats[0] < 2 else -1.0)
        label = int(rng.random() < 1 / (1 + np.exp(-logit)))
        lines.append("\t".join([str(label)] + [str(int(v)) for v in ints] + [f"{int(c):08x}" for c in cats]))
    path.write_text("\n".join(lines) + "\n")
    return path


def sets(pairs: Dict[str, str]) -> list:
    return [a for k, v in pairs.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("numeric")
    raw, out = tiny_criteo(root / "train.txt"), root / "prepared"
    modes = "{" + ", ".join(f'{f} = "{m}"' for f, m in MODES.items()) + "}"
    args = {"prepare.source": "criteo", "prepare.input": str(raw), "prepare.output": str(out)}
    args.update({"prepare.min_count": "1", "prepare.numerical": "bucketize", "prepare.numerical_fields": modes})
    assert main(["prepare", *sets(args)]) == 0
    return out


def test_per_field_modes_in_the_schema(prepared: Path) -> None:
    schema = PreparedDataset(str(prepared)).schema
    assert schema["I1"].kind == FieldKind.WEIGHTED and schema["I1"].num_embeddings == 1
    assert schema["I3"].kind == FieldKind.DENSE and schema.dense_names == ("I3",)
    assert schema["I4"].kind == FieldKind.CATEGORICAL and schema["I5"].kind == FieldKind.CATEGORICAL
    assert schema.is_weighted


@pytest.mark.parametrize("method", ["dnis", "pep"])
def test_search_and_prune_numeric_fields(prepared: Path, tmp_path: Path, method: str) -> None:
    train = {"data.path": str(prepared), "model.arch": "fm", "model.embedding_dim": "8", "train.epochs": "2"}
    train.update({"train.batch_size": "128", "train.device": "cpu", "train.progress": "false"})
    train.update({"prune.crs": "[4.0]", "search.dnis.blocking": "per_table", "search.dnis.num_blocks": "2"})
    train.update({"search.pep.gate": '"exp"', "search.pep.ramp_to": "0.0"})
    search, pruned = tmp_path / "search", tmp_path / "pruned"
    assert main(["search", "--method", method, *sets(train), "--out", str(search)]) == 0
    results = json.loads((search / "results.json").read_text())
    features = results["features"]
    assert {"I1", "I2", "I4", "I5", "C1"} <= set(features) and "I3" not in features  # dense stays outside
    assert main(["prune", "--from", str(search), *sets(train), "--out", str(pruned)]) == 0
    (cr_dir,) = pruned.glob("cr-*")
    masks = load_file(str(cr_dir / "masks.safetensors"))
    assert set(masks) == set(features)
    kept = {f: m.bool().sum(dim=1).float().mean().item() for f, m in masks.items()}
    assert masks["I1"].shape == (1, 8) and masks["I2"].shape == (1, 8)  # one id per weighted field
    assert any(kept[f] < 8 for f in ("I1", "I2", "I4", "I5"))  # numeric fields are pruned like the rest
    assert sum(m.sum().item() for m in masks.values()) * 4 == pytest.approx(
        sum(m.numel() for m in masks.values()), rel=0.02
    )
