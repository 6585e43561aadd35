"""FM / DeepFM / LR with ``model.linear = "table"``: the first-order term from the arch's own one-weight-per-id
table (never pruned), against a plain reference; the default embedding path is unchanged."""

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from torchrec import KeyedJaggedTensor
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.cli import main
from recdim.config import ModelConfig
from recdim.data.prepared import PreparedDataset
from recdim.models import DeepFMArch, FMArch, LRArch, RecModel, build_arch
from recdim.models.fm import IDS_PER_ROW, LinearTable, linear_table_name
from recdim.modules.uniform import UniformEmbeddingProvider

B, K = 5, 8
K_CFG = 16  # model.embedding_dim of configs/pep0_lr_ml100k.toml
ROWS = {"a": 11, "b": 6, "c": 3}


def bag_kjt(seed: int = 0, weighted: bool = False) -> KeyedJaggedTensor:
    """Bags of 0..3 ids per row and feature (empty bags included)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(ROWS) * B,), generator=g)
    ids = torch.cat(
        [
            torch.randint(0, n, (int(lengths[i * B : (i + 1) * B].sum()),), generator=g)
            for i, n in enumerate(ROWS.values())
        ]
    )
    weights = torch.rand(ids.numel(), generator=g) + 0.5 if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(keys=list(ROWS), values=ids, lengths=lengths.int(), weights=weights)


def reference(table: LinearTable, kjt: KeyedJaggedTensor, mean: bool = False) -> torch.Tensor:
    """[B, F]: per bag, the sum (or mean) of its ids' weights, from a plain per-id weight vector."""
    tables = {t.name: table.ec.embeddings[t.name].weight.detach() for t in table.tables}
    w = table.weights(tables)
    out = torch.zeros(B, len(ROWS))
    for j, (f, jt) in enumerate(kjt.to_dict().items()):
        ids, weights = jt.values(), jt.weights_or_none()
        for b, (lo, hi) in enumerate(zip(jt.offsets()[:-1].tolist(), jt.offsets()[1:].tolist())):
            vals = w[f][ids[lo:hi]] * (weights[lo:hi] if weights is not None else 1.0)
            out[b, j] = vals.mean() if mean and hi > lo else vals.sum()
    return out


def zero_embeddings() -> KeyedTensor:
    return KeyedTensor.from_tensor_list(list(ROWS), [torch.zeros(B, K) for _ in ROWS])


def test_table_layout_and_weights() -> None:
    table = LinearTable(ROWS)
    for t in table.tables:
        n = ROWS[t.feature_names[0]]
        assert t.name == linear_table_name(t.feature_names[0])
        assert (t.num_embeddings, t.embedding_dim) == (-(-n // IDS_PER_ROW), IDS_PER_ROW)
    assert table.num_params() == sum(IDS_PER_ROW * -(-n // IDS_PER_ROW) for n in ROWS.values())
    w = torch.arange(12.0).view(3, 4)
    assert torch.equal(table.weights({"lin_a": w, "lin_b": w[:2], "lin_c": w[:1]})["a"], torch.arange(11.0))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_table_matches_plain_reference(weighted: bool, pooling: str) -> None:
    torch.manual_seed(0)
    table = LinearTable(ROWS, pooling)
    for t in table.tables:
        torch.nn.init.normal_(table.ec.embeddings[t.name].weight)
    kjt = bag_kjt(1, weighted)
    out = table(kjt)
    assert out.shape == (B, len(ROWS))
    torch.testing.assert_close(out, reference(table, kjt, mean=pooling == "mean"))
    keys = list(reversed(ROWS))  # the batch's key order does not matter
    permuted = kjt.permute([list(ROWS).index(k) for k in keys])
    torch.testing.assert_close(table(permuted), out)


@pytest.mark.parametrize("arch_cls", [FMArch, DeepFMArch, LRArch])
def test_first_order_is_sum_of_id_weights_plus_bias(arch_cls: type) -> None:
    """With zero embeddings (every field pruned to 0 dims) FM, DeepFM and LR are bias + sum_f beta_f(id)."""
    torch.manual_seed(0)
    kwargs = {"hidden": (4,)} if arch_cls is DeepFMArch else {}
    arch = arch_cls(list(ROWS), K, 0, init_bias=0.25, linear="table", num_embeddings=ROWS, **kwargs)
    assert arch.reads_ids and arch.linear_table is not None
    for t in arch.linear_table.tables:
        torch.nn.init.normal_(arch.linear_table.ec.embeddings[t.name].weight)
    kjt = bag_kjt(2)
    y = arch(torch.empty(B, 0), zero_embeddings(), kjt)
    want = 0.25 + reference(arch.linear_table, kjt).sum(dim=1)
    if arch_cls is DeepFMArch:
        want = want + arch.deep(torch.empty(B, 0), torch.zeros(B, len(ROWS), K))
    assert y.shape == (B,)
    torch.testing.assert_close(y, want)
    with pytest.raises(ValueError, match="pass the ids"):
        arch(torch.empty(B, 0), zero_embeddings())


def test_gradient_reaches_only_the_looked_up_ids() -> None:
    arch = FMArch(list(ROWS), K, 2, linear="table", num_embeddings=ROWS)
    model = RecModel(UniformEmbeddingProvider(ROWS, K), arch)
    kjt = bag_kjt(3)
    model(torch.randn(B, 2), kjt).sum().backward()
    w = arch.linear_table.weights(
        {t.name: arch.linear_table.ec.embeddings[t.name].weight.grad for t in arch.linear_table.tables}
    )
    for f, jt in kjt.to_dict().items():
        counts = torch.bincount(jt.values(), minlength=ROWS[f]).float()
        torch.testing.assert_close(w[f], counts)  # d(sum of outputs) / d beta_f(id) = times id was looked up
    assert arch.fm.first_order.field_weight is None
    assert model.provider.ebc.embedding_bags["t_a"].weight.grad is not None  # the pairwise term still trains e


def test_default_is_the_embedding_path() -> None:
    names = list(ROWS)
    arch = build_arch(ModelConfig(arch="fm", embedding_dim=K), names, 2, num_embeddings=ROWS)
    assert isinstance(arch, FMArch) and not arch.reads_ids and arch.linear_table is None
    with torch.no_grad():
        arch.fm.first_order.field_weight.normal_()
    embs, dense = [torch.randn(B, K) for _ in names], torch.randn(B, 2)
    e = torch.stack(embs, dim=1)
    w, u = arch.fm.first_order.field_weight, arch.fm.first_order.dense_linear.weight[0]
    want = arch.bias + (e * w).sum((1, 2)) + dense @ u + arch.fm.second_order(dense, e)
    torch.testing.assert_close(arch(dense, KeyedTensor.from_tensor_list(names, embs)), want)
    assert not any(
        isinstance(m, LinearTable) for m in build_arch(ModelConfig(arch="lr", embedding_dim=K), names, 2).modules()
    )


def test_config_and_factory() -> None:
    cfg = ModelConfig(arch="deepfm", embedding_dim=K, linear="table", mlp=(4,))
    arch = build_arch(cfg, list(ROWS), 0, num_embeddings=ROWS)
    assert isinstance(arch, DeepFMArch) and arch.linear_table.num_embeddings == ROWS
    with pytest.raises(ValueError, match="number of ids"):
        build_arch(cfg, list(ROWS), 0)
    with pytest.raises(ValueError, match="model.linear = 'table' needs an arch"):
        ModelConfig(arch="dlrm", linear="table")
    with pytest.raises(ValueError, match="model.linear must be"):
        ModelConfig(arch="fm", linear="dense")  # type: ignore[arg-type]


def test_arch_state_round_trips_into_a_fresh_arch() -> None:
    kwargs = {"linear": "table", "num_embeddings": ROWS}
    a, b = FMArch(list(ROWS), K, 0, **kwargs), FMArch(list(ROWS), K, 0, **kwargs)
    for t in a.linear_table.tables:
        torch.nn.init.normal_(a.linear_table.ec.embeddings[t.name].weight)
    b.load_state_dict(a.state_dict())
    kjt = bag_kjt(4)
    torch.testing.assert_close(
        b(torch.empty(B, 0), zero_embeddings(), kjt), a(torch.empty(B, 0), zero_embeddings(), kjt)
    )
    with pytest.raises(RuntimeError, match="missing keys"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if "lin_a" not in k})


ROOT = Path(__file__).resolve().parents[2]


def tiny_ml100k(root: Path, users: int = 40, items: int = 60, rows: int = 2000) -> Path:
    """An ml-100k layout (u.data, u.user, u.item) whose clicks follow per-user and per-item biases only."""
    r = random.Random(0)
    root.mkdir(parents=True)
    occupations = ["a", "b", "c"]
    (root / "u.user").write_text(
        "".join(
            f"{u}|{r.randint(18, 60)}|{r.choice('MF')}|{r.choice(occupations)}|{r.randint(1, 5)}\n"
            for u in range(1, users + 1)
        )
    )
    flags = lambda: "|".join(r.choice("01") for _ in range(19))  # noqa: E731
    (root / "u.item").write_text(
        "".join(f"{i}|M{i} (1995)|01-Jan-1995||http://x|{flags()}\n" for i in range(1, items + 1))
    )
    ub, ib = [r.gauss(0, 1) for _ in range(users + 1)], [r.gauss(0, 1) for _ in range(items + 1)]
    lines = []
    for k in range(rows):
        u, i = r.randint(1, users), r.randint(1, items)
        s = ub[u] + ib[i] + r.gauss(0, 0.5)
        lines.append(f"{u}\t{i}\t{5 if s > 1 else 4 if s > 0 else 2 if s > -1 else 1}\t{880000000 + k}\n")
    (root / "u.data").write_text("".join(lines))
    return root


def test_pep0_against_lr_config_shrunk(tmp_path: Path) -> None:
    """configs/pep0_lr_ml100k.toml on a tiny ml-100k: PEP prunes FM to 2 kept values (fields at 0 dims), the
    tier retrain trains the linear table, the artifact serves the retrained model, and LR runs alike."""
    data, out = tmp_path / "data", tmp_path / "cmp"
    sets = [f"prepare.input={tiny_ml100k(tmp_path / 'ml')}", f"prepare.output={data}", "prepare.min_count=1"]
    sets += ["compare.seeds=[0]", f"compare.output={out}", "train.epochs=2", "train.batch_size=256"]
    sets += ["compare.stop_on_error=true"]
    cfg = str(ROOT / "configs" / "pep0_lr_ml100k.toml")
    assert main(["prepare", "--config", cfg, *[a for s in sets for a in ("--set", s)]]) == 0
    total = K_CFG * sum(
        PreparedDataset(str(data)).schema[f].num_embeddings for f in PreparedDataset(str(data)).feature_names(())
    )
    sets.append(f"compare.budgets=[{total / 2}]")  # PEP-0: 2 values left of the whole model
    assert main(["compare", "--config", cfg, *[a for s in sets for a in ("--set", s)]]) == 0
    results = {}
    for arch in ("fm", "lr"):
        (run,) = (out / "runs" / arch).glob("cr*/pep/seed0/retrain")
        results[arch] = json.loads((run / "results.json").read_text())
        assert results[arch]["config"]["model"]["linear"] == "table"
        assert results[arch]["prune"]["kept"] == 2
        assert sum(d["row_mean"] == 0.0 for d in results[arch]["field_dims"].values()) >= 5  # fields at 0 dims
        assert results[arch]["test"]["auc"] > 0.75  # the per-id biases are learned from the linear table alone
    # The exported PEP-0 model scores the test split as the retrained one did.
    export = next((out / "runs" / "fm").glob("cr*/pep/seed0/retrain/export"))
    shard = sorted((data / "test").glob("*.parquet"))[0]
    assert main(["predict", "--model", str(export), "--input", str(shard), "--out", str(tmp_path / "p.csv")]) == 0
    preds = torch.tensor(pd.read_csv(tmp_path / "p.csv")["prediction"].to_numpy())
    labels = torch.tensor(pd.read_parquet(shard)["label"].to_numpy()).bool()
    pos, neg = preds[labels], preds[~labels]
    auc = float((pos[:, None] > neg[None, :]).double().mean() + 0.5 * (pos[:, None] == neg[None, :]).double().mean())
    assert abs(auc - results["fm"]["test"]["auc"]) < 1e-6
