"""Every provider's effective weights are what a single id reads through its forward pass."""

import torch
from torchrec import KeyedJaggedTensor

from recdim.layout.blocks import make_block_plan
from recdim.modules.soft_selection import SoftSelectionProvider
from recdim.modules.table_init import full_tables, init_tables
from recdim.modules.threshold import GATES, ThresholdEmbeddingProvider, make_thresholds
from recdim.modules.uniform import UniformEmbeddingProvider

SIZES = {"a": 37, "b": 5}
K = 8


def providers():
    counts = {f: torch.arange(n, 0, -1).numpy() for f, n in SIZES.items()}
    yield UniformEmbeddingProvider(SIZES, K, device=torch.device("cpu"))
    for scheme in ("global", "per_table"):
        p = SoftSelectionProvider(SIZES, K, make_block_plan(scheme, counts, 4), device=torch.device("cpu"))
        with torch.no_grad():
            p.alpha.uniform_(0, 1)
        yield p
    for granularity in ("global", "dimension", "feature", "feature_dimension"):
        t = make_thresholds(granularity, list(SIZES), K, init=-2.5)
        yield ThresholdEmbeddingProvider(SIZES, K, t, GATES["sigmoid"], device=torch.device("cpu"))


def test_single_id_output_equals_effective_row():
    for provider in providers():
        holder = torch.nn.Module()
        holder.provider = provider
        init_tables(holder, seed=3, std=0.1)
        if isinstance(provider, ThresholdEmbeddingProvider):  # thresholds stored in the table, if any
            for w in (provider.ec.embeddings[t.name].weight for t in provider.tables):
                provider.thresholds.init_piece(w.data, (0, w.size(1)))
        eff = provider.effective_weights(full_tables(holder))
        for f, n in SIZES.items():
            other = [g for g in SIZES if g != f][0]
            ids = torch.arange(n)
            kjt = KeyedJaggedTensor.from_lengths_sync(
                keys=[f, other] if f == provider.feature_names[0] else [other, f],
                values=torch.cat([ids, torch.zeros(n, dtype=torch.long)])
                if f == provider.feature_names[0]
                else torch.cat([torch.zeros(n, dtype=torch.long), ids]),
                lengths=torch.ones(2 * n, dtype=torch.int32),
            )
            out = provider(kjt).to_dict()[f]
            torch.testing.assert_close(out, eff[f], rtol=0, atol=1e-6, msg=f"{type(provider).__name__} {f}")
