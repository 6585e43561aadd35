"""The sampled survivor estimate against a full count: exact on whole tables, within its standard error
on a sample, the same on every rank of a sharded run, and a clear error on bad settings."""

from __future__ import annotations

from typing import List, Tuple

import pytest
import torch

from recdim.config import PEPConfig, TrainConfig
from recdim.modules.table_init import init_tables
from recdim.modules.threshold import ThresholdEmbeddingProvider, make_thresholds
from recdim.search.pep_tables import count_nonzeros
from recdim.search.sampled_count import SampledCount
from tests.dist_utils import run_ranks

K = 8
NUM = {"a": 400, "b": 300, "c": 250}


def _half_pruned(provider: ThresholdEmbeddingProvider) -> int:
    """Sets the threshold offset where about half of the values survive; returns the exact count."""
    total = provider.embedding_params()
    for offset in torch.linspace(-6.0, 6.0, 97).tolist():
        provider.threshold_offset.fill_(offset)
        exact = count_nonzeros(provider)[0]
        if 0.4 * total < exact < 0.6 * total:
            return exact
    raise AssertionError("no offset prunes about half")


def _provider(device: torch.device = torch.device("cpu")) -> ThresholdEmbeddingProvider:
    provider = ThresholdEmbeddingProvider(
        NUM, K, make_thresholds("feature_dimension", list(NUM), K, -4.0), device=device
    )
    if device.type != "meta":
        init_tables(provider, 0, 0.1)
    return provider


def test_whole_tables_are_exact_and_a_sample_is_within_its_error() -> None:
    provider = _provider()
    exact = _half_pruned(provider)
    est, se = SampledCount(provider, fraction=1.0).estimate()
    assert est == exact and se == 0.0
    misses = 0
    for seed in range(20):
        est, se = SampledCount(provider, fraction=0.1, seed=seed).estimate()
        assert se > 0
        misses += abs(est - exact) > 3 * se
    assert misses <= 2  # 3 standard errors: about 0.3% of draws each, a handful of seeds at most
    sampler = SampledCount(provider, fraction=0.1, seed=3)
    est, se = sampler.estimate()
    assert sampler.estimate() == (est, se)  # the same rows every call
    far, _, _ = sampler.far_above(int(est - 6 * se))
    assert far
    far, _, _ = sampler.far_above(int(est - 4 * se))
    assert not far  # within z = 5 standard errors: an exact count is due


def test_bad_settings_are_named() -> None:
    provider = _provider()
    with pytest.raises(ValueError, match="pep.count_sample"):
        SampledCount(provider, fraction=0.0)
    with pytest.raises(ValueError, match="z must be > 0"):
        SampledCount(provider, z=0.0)
    with pytest.raises(ValueError, match="pep.count_sample"):
        PEPConfig(count_sample=1.5)


def _sharded(rank: int, world: int) -> Tuple[float, float, int, List[float]]:
    from recdim.train.distributed import init_distributed, shard_model

    ctx = init_distributed("cpu")
    provider = _provider(torch.device("meta"))
    cfg = TrainConfig(embedding_optimizer="rowwise_adagrad", sharding="table_wise", device="cpu")
    dmp = shard_model(provider, cfg, ctx)
    init_tables(dmp, 0, 0.1)
    live = dmp.module
    exact = _half_pruned(live)
    est, se = SampledCount(live, fraction=1.0).estimate()
    sampled = list(SampledCount(live, fraction=0.2, seed=1).estimate())
    return est, se, exact, sampled


@pytest.mark.multiprocess
def test_two_ranks_agree_and_whole_shards_are_exact() -> None:
    """Each rank samples its own shards; the all-reduced estimate is the same on both ranks."""
    first, second = run_ranks(2, _sharded)
    assert first == second
    est, se, exact, (sampled, sampled_se) = first
    assert est == exact and se == 0.0
    assert abs(sampled - exact) < 5 * sampled_se
