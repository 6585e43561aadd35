"""The packed (v2) artifact: exact float32 serving, float16 / int8 within stated tolerances, bytes at the
floor, v1 refused, `recdim export --dtype / --torchrec` end to end."""

import hashlib
import json
import random
import shutil

import pytest
import torch

from recdim.cli import main
from recdim.export.artifact import MANIFEST, MANIFEST_DIGEST, ArtifactError, read_artifact
from recdim.export.recode import recode_artifact
from recdim.export.serving import export_model, load_serving_model
from recdim.layout.packed_table import pack_table
from tests.export.test_artifact import _json_paths, batch, build, schema

# Stated tolerances on this model (DeepFM, K = 8, values ~ N(0, 1), bags of up to 3 ids):
# float32 serves bit-identical predictions; float16 embeddings are off by at most 2**-11 relative per value
# (so a bag of L ids by L * 2**-11 * max|w|); int8 by half a quantization step per value (checked per row
# from the stored scales below); predicted probabilities within 2e-3 (float16) and 2e-2 (int8).
PROB_TOL = {"float16": 2e-3, "int8": 2e-2}


@pytest.fixture(scope="module")
def model():
    return build()


def predictions(m, b):
    with torch.no_grad():
        return torch.sigmoid(m(b.dense_features, b.sparse_features)), m.provider(b.sparse_features).values()


def test_float32_serves_bit_identical_predictions(model, tmp_path):
    m, cfg, plans, _ = model
    export_model(tmp_path / "m", m, cfg, schema())
    b = batch(200)
    want, _ = predictions(m, b)
    serving = load_serving_model(tmp_path / "m")
    assert torch.equal(serving.predict(b), want)
    for p, q in zip(plans, serving.artifact.plans):  # the planner's plan comes back as it was
        assert [(t.name, t.width, t.num_rows) for t in p.tiers] == [(t.name, t.width, t.num_rows) for t in q.tiers]
        assert torch.equal(p.global_rows(), q.global_rows())


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_float16_and_int8_stay_within_tolerance(model, tmp_path, dtype):
    m, cfg, plans, weights = model
    export_model(tmp_path / dtype, m, cfg, schema(), values_dtype=dtype)
    b = batch(200)
    want, want_emb = predictions(m, b)
    serving = load_serving_model(tmp_path / dtype)
    assert serving.artifact.values_dtype == dtype
    assert (serving.predict(b) - want).abs().max().item() <= PROB_TOL[dtype]
    masked = m.provider.masked_weights()
    got = serving.model.provider.masked_weights()
    tiers = m.provider.tier_weights()
    for plan in plans:
        w, err = masked[plan.name], (got[plan.name] - masked[plan.name]).abs()
        if dtype == "float16":
            assert bool((err <= w.abs() * 2**-11 + 1e-7).all())
        else:  # half a step of the row's stored scale
            packed = pack_table(plan, tiers[plan.name], "int8")
            ids = packed.kept.set_ids()
            bound = 0.5 * packed.values["scale"].float() * (1 + 1e-3) + 1e-6
            assert bool((err[ids] <= bound.unsqueeze(1)).all()) and float(err.sum()) == float(err[ids].sum())
    L = 3
    assert (serving.model.provider(b.sparse_features).values() - want_emb).abs().max().item() <= L * max(
        (got[n] - masked[n]).abs().max().item() for n in masked
    ) + 1e-6


def test_bytes_sit_at_the_floor_and_float16_halves_the_values(model, tmp_path):
    m, cfg, *_ = model
    sizes = {}
    for dtype in ("float32", "float16", "int8"):
        manifest = export_model(tmp_path / dtype, m, cfg, schema(), values_dtype=dtype)
        b = manifest["bytes"]
        sizes[dtype] = b
        assert b["total"] < b["training"] and b["total"] < b["csr"]
    f32, f16 = sizes["float32"], sizes["float16"]
    assert f32["total"] <= f32["floor"] + f32["rows"]
    assert f32["values"] == 4 * f32["nnz"] and f16["values"] == 2 * f32["nnz"]
    assert f16["total"] - f16["values"] == f32["total"] - f32["values"]


def test_a_v1_artifact_is_refused_with_what_to_do(model, tmp_path):
    m, cfg, *_ = model
    export_model(tmp_path / "m", m, cfg, schema())
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    manifest["format_version"] = 1
    data = json.dumps(manifest).encode()
    (tmp_path / "m" / MANIFEST).write_bytes(data)
    (tmp_path / "m" / MANIFEST_DIGEST).write_text(hashlib.sha256(data).hexdigest())
    with pytest.raises(ArtifactError, match="format v1.*re-export"):
        read_artifact(tmp_path / "m")


def test_fuzzed_int8_artifacts_are_refused_or_serve_the_same(model, tmp_path):
    m, cfg, *_ = model
    path = tmp_path / "m"
    export_model(path, m, cfg, schema(), values_dtype="int8")
    b = batch()
    want = load_serving_model(path).predict(b)
    rng = random.Random(5)
    refused = 0
    for case in range(30):
        d = tmp_path / f"case{case}"
        shutil.copytree(path, d)
        manifest = json.loads((d / MANIFEST).read_text())
        tables = [p for p, v in _json_paths(manifest) if p[0] == "tables" and not isinstance(v, bool)]
        where = rng.choice(tables)
        node = manifest
        for k in where[:-1]:
            node = node[k]
        old = node[where[-1]]
        node[where[-1]] = (old + rng.choice([-1, 1, 7])) if isinstance(old, (int, float)) else str(old) + "x"
        data = json.dumps(manifest).encode()
        (d / MANIFEST).write_bytes(data)
        (d / MANIFEST_DIGEST).write_text(hashlib.sha256(data).hexdigest())
        try:
            got = load_serving_model(d).predict(b)
        except (ArtifactError, ValueError) as e:
            assert str(d) in str(e) or MANIFEST in str(e), (case, where, e)
            refused += 1
            continue
        assert torch.equal(got, want), (case, where)
    assert refused >= 20


def test_cli_export_dtype_and_torchrec(model, tmp_path, monkeypatch, capsys):
    """`recdim export --dtype int8 --torchrec DIR` recodes what export_run wrote and writes the TorchRec export."""
    import recdim.export.from_run as from_run

    m, cfg, *_ = model

    def fake_export_run(run_dir, out):
        export_model(out, m, cfg, schema())
        return out

    monkeypatch.setattr(from_run, "export_run", fake_export_run)
    out, tr = tmp_path / "model", tmp_path / "torchrec"
    assert main(["export", "--from", str(tmp_path), "--out", str(out), "--dtype", "int8", "--torchrec", str(tr)]) == 0
    assert "int8 values" in capsys.readouterr().out
    assert read_artifact(out).values_dtype == "int8"
    from recdim.export.torchrec_export import read_torchrec_export

    assert {c.data_type.name for c in read_torchrec_export(tr).configs} == {"INT8"}
    recode_artifact(out, "float16", tmp_path / "f16")  # recoding starts from the values as stored (int8-rounded)
    assert read_artifact(tmp_path / "f16").values_dtype == "float16"
    diff = load_serving_model(tmp_path / "f16").predict(batch()) - load_serving_model(out).predict(batch())
    assert diff.abs().max().item() <= PROB_TOL["float16"]
