"""The TorchRec-standard export: TorchRec's quantized EmbeddingBagCollection (CPU) loads the tier tables
with its own load_state_dict and reproduces recdim's serving embeddings.

Stated tolerances (values ~ N(0, 1), bags of up to L = 3 ids): FP32 within 1e-6; FP16 within
L * 2**-11 * max|w|; INT8 within L * max_row(qscale) / 2 (TorchRec's row-wise quantization of each tier
row, padding slots included in the row's range)."""

import hashlib
import json

import pytest
import torch
from torchrec.modules.embedding_configs import DataType
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection

from recdim.export.serving import export_model, load_serving_model
from recdim.export.torchrec_export import (
    MANIFEST,
    MANIFEST_DIGEST,
    STATE_FILE,
    TorchRecExportError,
    export_torchrec,
    read_torchrec_export,
)
from tests.export.test_artifact import batch, build, schema

L = 3


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    m, cfg, plans, _ = build()
    path = tmp_path_factory.mktemp("art") / "model"
    export_model(path, m, cfg, schema())
    return path, plans


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_torchrec_quant_ebc_reproduces_the_serving_embeddings(artifact, tmp_path, dtype):
    path, plans = artifact
    export_torchrec(path, tmp_path / "tr", dtype)
    tables = read_torchrec_export(tmp_path / "tr")
    # One EmbeddingBagConfig per feature x tier, each with its own width and data type.
    assert [c.name for c in tables.configs] == [t.name for p in plans for t in p.tiers]
    assert [c.embedding_dim for c in tables.configs] == [t.width for p in plans for t in p.tiers]
    want_type = {"float32": DataType.FP32, "float16": DataType.FP16, "int8": DataType.INT8}[dtype]
    assert {c.data_type for c in tables.configs} == {want_type}
    # TorchRec's own module, built from the configs, loads the state dict as it is.
    ebc = QuantEmbeddingBagCollection(
        tables.configs, is_weighted=False, device=torch.device("cpu"), quant_state_dict_split_scale_bias=True
    )
    assert not ebc.load_state_dict(tables.state_dict, strict=True).missing_keys
    b = batch(100)
    serving = load_serving_model(path)
    with torch.no_grad():
        want = serving.model.provider(b.sparse_features).values()
    got = tables.embeddings(ebc, b.sparse_features).values()
    wmax = max(float(v.abs().max()) for vs in serving.artifact.tier_values.values() for v in vs)
    if dtype == "float32":
        tol = 1e-6
    elif dtype == "float16":
        tol = L * 2**-11 * wmax
    else:
        qscale = max(float(v.float().max()) for k, v in tables.state_dict.items() if k.endswith("weight_qscale"))
        tol = L * qscale / 2 * 1.01
    assert (got - want).abs().max().item() <= tol + 1e-6
    # The remap says (tier, row) or -1 for every id, as the plan does.
    for p in plans:
        r = tables.remaps[p.feature]
        g = p.global_rows()
        assert torch.equal(r[:, 0] < 0, g < 0) and torch.equal(r[:, 1] < 0, g < 0)


def test_an_edited_export_is_refused(artifact, tmp_path):
    path, _ = artifact
    export_torchrec(path, tmp_path / "tr")
    f = tmp_path / "tr" / STATE_FILE
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(TorchRecExportError, match="sha256"):
        read_torchrec_export(tmp_path / "tr")
    export_torchrec(path, tmp_path / "tr2")
    manifest = json.loads((tmp_path / "tr2" / MANIFEST).read_text())
    manifest["tables"][0]["embedding_dim"] += 4
    raw = json.dumps(manifest).encode()
    (tmp_path / "tr2" / MANIFEST).write_bytes(raw)
    (tmp_path / "tr2" / MANIFEST_DIGEST).write_text(hashlib.sha256(raw).hexdigest())
    with pytest.raises(TorchRecExportError, match="state_dict.safetensors"):
        read_torchrec_export(tmp_path / "tr2")


def test_mean_pooling_matches_the_tier_provider(artifact):
    """The reference lookup divides by the original bag length, dropped ids included, as recdim does."""
    from recdim.export.artifact import read_artifact
    from recdim.export.torchrec_export import torchrec_tables
    from recdim.modules.tiered import TieredEmbeddingProvider

    art = read_artifact(artifact[0])
    tables = torchrec_tables(art.plans, art.tier_values, pooling="mean")
    provider = TieredEmbeddingProvider(art.plans, art.multi_valued, "mean", False, torch.device("cpu"))
    provider.load_tier_values(art.tier_values)
    b = batch(50)
    with torch.no_grad():
        want = provider(b.sparse_features).values()
    got = tables.embeddings(tables.quantized_ebc(), b.sparse_features).values()
    assert (got - want).abs().max().item() <= 1e-6
