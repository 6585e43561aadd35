"""LR: the hand formula, FM without its pairwise term, and LR over one-dimensional embeddings (a K = 1 table,
or tier tables whose rows keep one column)."""

import torch
from torchrec import KeyedJaggedTensor
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdim.config import ModelConfig
from recdim.models import FMArch, LRArch, RecModel, build_arch
from recdim.modules.tiered import TieredEmbeddingProvider
from recdim.modules.uniform import UniformEmbeddingProvider, table_name
from recdim.prune.planner import PlannerConfig, plan_tables

B, K = 6, 8
ROWS = {"a": 11, "b": 7}


def single_valued_kjt(seed: int = 0) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.randint(0, n, (B,), generator=g) for n in ROWS.values()])
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(ROWS), values=ids, lengths=torch.ones(B * len(ROWS), dtype=torch.int32)
    )


def test_matches_hand_formula_and_starts_with_unit_readout() -> None:
    names = ["a", "b", "c"]
    arch = LRArch(names, K, 2, init_bias=-1.0)
    assert torch.equal(arch.linear.field_weight, torch.ones(3, K))
    embs = [torch.randn(B, K) for _ in names]
    dense = torch.randn(B, 2)
    with torch.no_grad():
        arch.linear.field_weight.normal_()
    w, u = arch.linear.field_weight, arch.linear.dense_linear.weight[0]
    want = -1.0 + sum((embs[f] * w[f]).sum(-1) for f in range(3)) + dense @ u
    torch.testing.assert_close(arch(dense, KeyedTensor.from_tensor_list(names, embs)), want)
    assert isinstance(build_arch(ModelConfig(arch="lr", embedding_dim=K), names, 2), LRArch)


def test_lr_is_fm_without_the_pairwise_term() -> None:
    names = ["a", "b", "c"]
    lr, fm = LRArch(names, K, 2, init_bias=0.3), FMArch(names, K, 2, init_bias=0.3)
    fm.fm.first_order.load_state_dict(lr.linear.state_dict())
    dense, embs = torch.randn(B, 2), [torch.randn(B, K) for _ in names]
    kt = KeyedTensor.from_tensor_list(names, embs)
    pairwise = fm.fm.second_order(dense, torch.stack(embs, dim=1))
    torch.testing.assert_close(lr(dense, kt), fm(dense, kt) - pairwise)


def test_one_dimensional_table_is_classic_lr() -> None:
    """K = 1 (an unsharded table; FBGEMM's training kernel wants multiples of 4): one weight per id."""
    provider = UniformEmbeddingProvider(ROWS, 1)
    model = RecModel(provider, LRArch(list(ROWS), 1, 0, init_bias=0.2))
    kjt = single_valued_kjt()
    w = {f: provider.ebc.embedding_bags[table_name(f)].weight[:, 0] for f in ROWS}
    ids = kjt.to_dict()
    want = 0.2 + sum(w[f][ids[f].values()] for f in ROWS)
    torch.testing.assert_close(model(torch.empty(B, 0), kjt), want)
    assert provider.embedding_params() == sum(ROWS.values())


def test_tiers_keeping_one_column_per_row_are_lr_over_one_dimensional_embeddings() -> None:
    g = torch.Generator().manual_seed(1)
    masks = {f: torch.zeros(n, K, dtype=torch.bool) for f, n in ROWS.items()}
    for m in masks.values():
        m[:, 0] = True
    plans = plan_tables(masks, PlannerConfig(max_tiers=1))
    assert all(int(p.kept_dims().sum()) == p.num_embeddings for p in plans)  # one value per id
    weights = {p.name: torch.randn(p.num_embeddings, K, generator=g) for p in plans}
    arch = LRArch(list(ROWS), K, 0, init_bias=0.1)
    with torch.no_grad():
        arch.linear.field_weight.normal_(generator=g)
    model = RecModel(TieredEmbeddingProvider.from_masked_weights(plans, weights), arch)
    kjt = single_valued_kjt(2)
    ids = kjt.to_dict()
    w0 = arch.linear.field_weight[:, 0]
    want = 0.1 + sum(w0[i] * weights[table_name(f)][ids[f].values(), 0] for i, f in enumerate(ROWS))
    torch.testing.assert_close(model(torch.empty(B, 0), kjt), want)
