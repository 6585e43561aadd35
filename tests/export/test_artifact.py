"""Artifacts: identical predictions after a roundtrip, honest byte counts, refused corruption, no pickle."""

import hashlib
import json
import pickle

import pytest
import torch
from safetensors.torch import load_file
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch

import recdim.export.artifact as artifact_mod
from recdim.config import ModelConfig
from recdim.data.schema import FieldKind, FieldSpec, LabelKind, Schema
from recdim.export.artifact import MANIFEST, ArtifactError, read_artifact
from recdim.export.inspect import format_summary, summarize
from recdim.export.serving import export_masked, export_model, load_serving_model
from recdim.models.factory import build_arch
from recdim.models.rec_model import RecModel
from recdim.modules.tiered import TieredEmbeddingProvider
from recdim.prune.planner import PlannerConfig, plan_tables

K = 8
SIZES = {"user": 50, "tags": 30, "city": 20}
KINDS = {"user": FieldKind.CATEGORICAL, "tags": FieldKind.MULTI_CATEGORICAL, "city": FieldKind.CATEGORICAL}


def schema() -> Schema:
    sparse = tuple(FieldSpec(f, KINDS[f], n, n - 1) for f, n in SIZES.items())
    return Schema(
        fields=sparse + (FieldSpec("x0", FieldKind.DENSE), FieldSpec("x1", FieldKind.DENSE)), label=LabelKind.BINARY
    )


def build(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for f, n in SIZES.items():
        sets = torch.rand(2, K, generator=g) < 0.5
        own = torch.rand(n, K, generator=g) < 0.4
        m = torch.where((torch.rand(n, 1, generator=g) < 0.5), sets[torch.randint(0, 2, (n,), generator=g)], own)
        m[torch.rand(n, generator=g) < 0.15] = False
        masks[f] = m
    plans = plan_tables(masks, PlannerConfig(max_tiers=2))
    weights = {p.name: torch.randn(p.num_embeddings, K, generator=g) for p in plans}
    cfg = ModelConfig(arch="deepfm", embedding_dim=K, mlp=(16, 8))
    torch.manual_seed(seed)
    arch = build_arch(cfg, list(SIZES), 2, 0.1)
    provider = TieredEmbeddingProvider.from_masked_weights(plans, weights, multi_valued=["tags"])
    return RecModel(provider, arch).eval(), cfg, plans, weights


def batch(B: int = 20, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.cat(
        [
            torch.ones(B, dtype=torch.int32),
            torch.randint(0, 4, (B,), generator=g).int(),
            torch.ones(B, dtype=torch.int32),
        ]
    )
    ids = torch.cat(
        [torch.randint(0, SIZES[f], (int(n),), generator=g) for f, n in zip(SIZES, lengths.view(3, B).sum(1))]
    )
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=list(SIZES), values=ids, lengths=lengths)
    return Batch(dense_features=torch.randn(B, 2, generator=g), sparse_features=kjt, labels=torch.zeros(B))


@pytest.fixture
def exported(tmp_path):
    model, cfg, plans, weights = build()
    path = tmp_path / "model"
    export_model(path, model, cfg, schema(), extra={"note": "test"})
    return path, model, cfg, plans, weights


def test_roundtrip_predictions_identical(exported, tmp_path):
    path, model, cfg, plans, weights = exported
    b = batch()
    serving = load_serving_model(path)
    with torch.no_grad():
        want = model(b.dense_features, b.sparse_features)
    torch.testing.assert_close(serving(b.dense_features, b.sparse_features), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(serving.predict(b), torch.sigmoid(want), rtol=0, atol=1e-6)
    # The pruned-uniform export path (masked K-wide weights) serves the same model.
    export_masked(tmp_path / "masked", plans, weights, model.arch, cfg, schema())
    torch.testing.assert_close(
        load_serving_model(tmp_path / "masked").predict(b), torch.sigmoid(want), rtol=0, atol=1e-6
    )
    assert serving.model.provider.embedding_bytes() == model.provider.embedding_bytes()


def _kind(name: str) -> str:
    if name == "values":
        return "values"
    if name in ("scale", "bias"):
        return "scales"
    if name.startswith("mask."):
        return "mask"
    return "rows" if name == "rows.kept" else "tiers"


def test_manifest_bytes_equal_tensor_bytes(exported):
    """Stored bytes by kind are the tensors' bytes; the training layout's bytes are the provider's."""
    path, model, *_ = exported
    manifest = json.loads((path / MANIFEST).read_text())
    kinds = ("values", "scales", "mask", "rows", "tiers")
    total = dict.fromkeys(kinds, 0)
    for t in manifest["tables"]:
        tensors = load_file(str(path / t["file"]))
        got = dict.fromkeys(kinds, 0)
        for name, v in tensors.items():
            got[_kind(name)] += v.numel() * v.element_size()
        for k in got:
            assert t["bytes"][k] == got[k], (t["name"], k)
            total[k] += got[k]
        assert t["bytes"]["total"] == sum(got.values()) < t["bytes"]["training"]
    assert manifest["bytes"]["total"] == sum(total.values())
    assert manifest["bytes"]["training"] == model.provider.embedding_bytes()
    for rel, entry in manifest["files"].items():
        assert (path / rel).stat().st_size == entry["size"]


def test_truncated_and_edited_files_are_refused(exported):
    path, *_ = exported
    manifest = json.loads((path / MANIFEST).read_text())
    table_file = path / manifest["tables"][1]["file"]
    data = table_file.read_bytes()
    table_file.write_bytes(data[: len(data) - 7])
    with pytest.raises(ArtifactError, match=table_file.name):
        read_artifact(path)
    table_file.write_bytes(data)
    read_artifact(path)
    arch_file = path / "arch.safetensors"
    edited = bytearray(arch_file.read_bytes())
    edited[-3] ^= 0x01
    arch_file.write_bytes(bytes(edited))
    with pytest.raises(ArtifactError, match="arch.safetensors.*sha256"):
        load_serving_model(path)


def test_edited_manifest_and_paths_outside_are_refused(exported):
    """Changing the label kind by hand (logits instead of probabilities), a model field, or a table path
    that leaves the artifact: refused with the file named, before any table is read."""
    from recdim.export.artifact import MANIFEST_DIGEST

    path, *_ = exported
    raw = (path / MANIFEST).read_bytes()
    manifest = json.loads(raw)
    edited = json.loads(raw)
    edited["schema"]["label"] = "rating"
    (path / MANIFEST).write_text(json.dumps(edited, indent=2))
    with pytest.raises(ArtifactError, match="manifest.json: does not match manifest.sha256"):
        read_artifact(path)
    # Re-signing an edit by hand still cannot point a table outside the artifact ...
    outside = json.loads(raw)
    outside["tables"][0]["file"] = "../../etc/passwd"
    outside["files"]["../../etc/passwd"] = {"size": 1, "sha256": "0"}
    data = json.dumps(outside, indent=2).encode()
    (path / MANIFEST).write_bytes(data)
    (path / MANIFEST_DIGEST).write_text(hashlib.sha256(data).hexdigest())
    with pytest.raises(ArtifactError, match="lies outside the artifact"):
        read_artifact(path)
    # ... nor make the arch disagree with its tensors without a one-line error.
    wrong = json.loads(raw)
    wrong["model"]["mlp"] = [7]
    data = json.dumps(wrong, indent=2).encode()
    (path / MANIFEST).write_bytes(data)
    (path / MANIFEST_DIGEST).write_text(hashlib.sha256(data).hexdigest())
    with pytest.raises(ArtifactError, match="arch.safetensors: does not fit the arch"):
        load_serving_model(path)
    (path / MANIFEST).write_bytes(raw)
    (path / MANIFEST_DIGEST).write_text(hashlib.sha256(raw).hexdigest())
    assert read_artifact(path).manifest == manifest
    (path / MANIFEST_DIGEST).unlink()
    with pytest.raises(ArtifactError, match="no manifest.sha256"):
        read_artifact(path)


def test_nothing_is_unpickled(exported, monkeypatch):
    path, model, *_ = exported

    def forbidden(*a, **k):
        raise AssertionError("unpickling during artifact load")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    b = batch()
    assert load_serving_model(path).predict(b).shape == (20,)


def test_crash_mid_export_leaves_no_complete_looking_directory(exported, monkeypatch):
    path, model, cfg, *_ = exported
    calls = {"n": 0}
    real = artifact_mod._write_tensors

    def crash_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(artifact_mod, "_write_tensors", crash_on_third)
    with pytest.raises(OSError):
        export_model(path, model, cfg, schema())
    with pytest.raises(ArtifactError, match="no manifest.json"):
        read_artifact(path)
    monkeypatch.setattr(artifact_mod, "_write_tensors", real)
    export_model(path, model, cfg, schema())
    read_artifact(path)
    assert not list(path.rglob(".*.tmp"))


def test_inspect_summary(exported):
    path, model, cfg, plans, _ = exported
    s = summarize(path)
    assert [t["name"] for t in s["tables"]] == [p.name for p in plans]
    for t, p in zip(s["tables"], plans):
        assert t["kept_rows"] == p.kept_rows and t["dropped_rows"] == p.dropped_rows
        assert sum(t["kept_dims_histogram"].values()) == p.num_embeddings
        assert t["kept_dims_histogram"].get(0, 0) == p.dropped_rows
        assert t["bytes"]["nnz"] == int(p.mask().sum())
    assert s["bytes"]["training"] == model.provider.embedding_bytes()
    assert s["bytes"]["total"] == json.loads((path / MANIFEST).read_text())["bytes"]["total"]
    text = format_summary(s)
    assert all(p.name in text for p in plans) and "uniform" in text
    json.dumps(s)


def _json_paths(obj, prefix=()):
    """Every (path, leaf) of a JSON value."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _json_paths(v, prefix + (i,))
    else:
        yield prefix, obj


def test_fuzzed_artifacts_are_refused_or_serve_the_same_predictions(exported, tmp_path):
    """Seeded byte flips, truncations, deletions, and manifest edits (also re-signed, as a deliberate
    edit would be): each ends in an ArtifactError naming a file, or loads and predicts exactly as before."""
    import random
    import shutil

    from recdim.export.artifact import MANIFEST_DIGEST

    path, *_ = exported
    b = batch()
    want = load_serving_model(path).predict(b)
    rng = random.Random(11)
    outcomes = {"refused": 0, "same": 0}
    for case in range(40):
        d = tmp_path / f"case{case}"
        shutil.copytree(path, d)
        files = sorted(p for p in d.rglob("*") if p.is_file())
        kind = rng.choice(["flip", "truncate", "delete", "edit", "edit_signed", "edit_signed"])
        if kind in ("flip", "truncate", "delete"):
            f = rng.choice(files)
            data = bytearray(f.read_bytes())
            if kind == "delete":
                f.unlink()
            elif kind == "truncate":
                f.write_bytes(bytes(data[: rng.randrange(len(data))]))
            else:
                pos = rng.randrange(len(data))
                data[pos] ^= 1 << rng.randrange(8)
                f.write_bytes(bytes(data))
        else:
            manifest = json.loads((d / MANIFEST).read_text())
            leaves = [p for p, v in _json_paths(manifest) if not isinstance(v, bool) and p[0] != "extra"]
            where = rng.choice(leaves)
            node = manifest
            for k in where[:-1]:
                node = node[k]
            old = node[where[-1]]
            node[where[-1]] = (old + rng.choice([-1, 1, 7])) if isinstance(old, (int, float)) else str(old) + "x"
            data = json.dumps(manifest, indent=2).encode()
            (d / MANIFEST).write_bytes(data)
            if kind == "edit_signed":
                (d / MANIFEST_DIGEST).write_text(hashlib.sha256(data).hexdigest())
        try:
            got = load_serving_model(d).predict(b)
        except (ArtifactError, ValueError) as e:
            assert str(d) in str(e) or MANIFEST in str(e), (case, kind, e)
            outcomes["refused"] += 1
            continue
        assert torch.equal(got, want), (case, kind)
        outcomes["same"] += 1
    assert outcomes["refused"] >= 30
