"""Every arch on every kind of provider: uniform, soft selection (DNIS / AutoSrh), thresholds (PEP),
candidate dimensions (AutoDim), mixed-dimension blocks (MDE) and compressed tiers. One training step each:
finite loss that goes down, gradients into the provider's tables and into every arch parameter."""

from typing import Callable, Dict, List

import pytest
import torch
from torchrec import KeyedJaggedTensor

from recdim.config import ARCHES, ModelConfig
from recdim.layout.blocks import per_table_blocks
from recdim.layout.segment import Segment
from recdim.models import RecModel, build_arch
from recdim.modules.candidate_dims import CandidateDimsProvider
from recdim.modules.mixed_dim import MixedDimensionProvider
from recdim.modules.provider import EmbeddingProvider
from recdim.modules.soft_selection import SequenceScaling, SoftSelectionProvider
from recdim.modules.threshold import ThresholdEmbeddingProvider
from recdim.modules.threshold_granularity import DimensionThreshold
from recdim.modules.tiered import TieredEmbeddingProvider
from recdim.modules.uniform import UniformEmbeddingProvider
from recdim.prune.planner import PlannerConfig, plan_tables

B, K, D = 16, 8, 2
ROWS = {"user": 30, "item": 20, "genre": 7}
MULTI = ["genre"]  # 0 to 3 ids per bag; user and item one id each


def features(arch: str) -> Dict[str, int]:
    return {f: ROWS[f] for f in (["user", "item"] if arch == "mf" else ROWS)}


def uniform(num: Dict[str, int]) -> EmbeddingProvider:
    return UniformEmbeddingProvider(num, K)


def soft_selection(num: Dict[str, int]) -> EmbeddingProvider:
    paths = {f: SequenceScaling() for f in MULTI if f in num}
    provider = SoftSelectionProvider(num, K, per_table_blocks(num, 3), paths)
    with torch.no_grad():
        provider.alpha.uniform_(0.2, 1.0, generator=torch.Generator().manual_seed(3))
    return provider


def threshold(num: Dict[str, int]) -> EmbeddingProvider:
    single = [f for f in num if f not in MULTI]
    return ThresholdEmbeddingProvider(num, K, DimensionThreshold(K, -4.0), single_valued=single)


def candidate_dims(num: Dict[str, int]) -> EmbeddingProvider:
    return CandidateDimsProvider(num, K, candidates=(4, 8))


def mixed_dim(num: Dict[str, int]) -> EmbeddingProvider:
    """Per feature: a K-wide block, a projected 4-wide block, a zero-padded 4-wide block."""
    blocks: List[Segment] = []
    for f, n in num.items():
        a, b = n // 3, 2 * n // 3
        blocks += [Segment(f, 0, a, K, False), Segment(f, a, b, 4, True), Segment(f, b, n, 4, False)]
    return MixedDimensionProvider(num, K, blocks, device=torch.device("cpu"))


def tiered(num: Dict[str, int]) -> EmbeddingProvider:
    """Random masks (some rows dropped, rows keeping different columns) planned into at most 2 tiers."""
    g = torch.Generator().manual_seed(5)
    masks = {f: (torch.rand(n, K, generator=g) < 0.6) & (torch.rand(n, 1, generator=g) < 0.9) for f, n in num.items()}
    plans = plan_tables(masks, PlannerConfig(max_tiers=2))
    weights = {p.name: torch.randn(p.num_embeddings, K, generator=g) * 0.3 for p in plans}
    return TieredEmbeddingProvider.from_masked_weights(plans, weights, [f for f in MULTI if f in num])


PROVIDERS: Dict[str, Callable[[Dict[str, int]], EmbeddingProvider]] = {
    "uniform": uniform,
    "soft_selection": soft_selection,
    "threshold": threshold,
    "candidate_dims": candidate_dims,
    "mixed_dim": mixed_dim,
    "tiered": tiered,
}


def batch(num: Dict[str, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    values, lengths = [], []
    for f, n in num.items():
        lens = torch.randint(0, 4, (B,), generator=g) if f in MULTI else torch.ones(B, dtype=torch.int64)
        values.append(torch.randint(0, n, (int(lens.sum()),), generator=g))
        lengths.append(lens)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(num), values=torch.cat(values), lengths=torch.cat(lengths).to(torch.int32)
    )
    return torch.randn(B, D, generator=g), kjt, (torch.rand(B, generator=g) < 0.4).float()


@pytest.mark.parametrize("provider_kind", sorted(PROVIDERS))
@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_one_training_step(arch: str, provider_kind: str) -> None:
    num = features(arch)
    torch.manual_seed(0)
    provider = PROVIDERS[provider_kind](num)
    cfg = ModelConfig(arch=arch, embedding_dim=K, mlp=(8,), bottom_mlp=(8,), attention_layers=2, attention_dim=4)
    model = RecModel(provider, build_arch(cfg, list(num), D, init_bias=-0.4))
    dense, kjt, labels = batch(num)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    optim = torch.optim.SGD(model.parameters(), lr=0.05)

    out = model(dense, kjt)
    assert out.shape == (B,) and torch.isfinite(out).all()
    loss = loss_fn(out, labels)
    loss.backward()
    tables = [p for p in provider.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert tables, f"{arch} on {provider_kind}: no gradient reached the provider"
    dead = [n for n, p in model.arch.named_parameters() if p.grad is None]
    assert not dead, f"{arch} on {provider_kind}: no gradient for {dead}"
    optim.step()
    with torch.no_grad():
        after = loss_fn(model(dense, kjt), labels)
    assert torch.isfinite(after) and after < loss, f"{arch} on {provider_kind}: {loss.item()} -> {after.item()}"
