"""Criteo-shaped synthetic data whose labels come from a planted teacher (``prepare.source = "synthetic"``).

Rows have ``I1..Im`` numerical columns (non-negative, heavy-tailed integer counts, 5% missing) and
``C1..Cn`` categorical columns (8-digit hex strings) whose ids are Zipf-popular. Each categorical field
f has a strength ``s_f`` (0 = noise) and a true rank ``r_f``: a random table ``T_f`` (card_f x r_f) and a
projection ``P_f`` (r_f x teacher_dim) give ``z_f = s_f * T_f[id] P_f``. The teacher's logit is::

    sum_f w . z_f  +  sum_{f<g} <z_f, z_g> / sqrt(teacher_dim)  +  sum_j a_j g_j  +  bias

where ``g_j`` is the standard normal behind numerical column j (``x_j = floor(exp(mu_j + sigma_j g_j))``)
and ``a_j = 0.5`` for the first half of the numerical columns (0 for the rest). The logit is scaled to
a standard deviation of 2 and shifted so that about 25% of the labels are positive;
``label ~ Bernoulli(sigmoid(logit))``.

Rows are generated in fixed blocks of 65,536, each from its own ``(seed, block)`` random stream, so
the data depend on the seed only (never on ``chunk_rows``) and are never all held in memory.
meta.json records the planted strength and rank of every field under ``planted``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa

from recdim.config import SyntheticConfig
from recdim.data.readers.base import (
    BadRowBudget,
    RawChunk,
    RawField,
    RawKind,
    RawReader,
    RawSchema,
    text_series,
)
from recdim.data.schema import LabelKind

BLOCK_ROWS = 65_536
MISSING_RATE = 0.05
POSITIVE_RATE = 0.25
LOGIT_STD = 2.0
DENSE_STRENGTH = 0.5
CALIBRATION_ROWS = 20_000
_SCRAMBLE = 2654435761  # odd: multiplying by it mod 2^32 permutes the 32-bit tokens


def _validate(cfg: SyntheticConfig) -> None:
    n = len(cfg.cardinalities)
    if n == 0 or len(cfg.strengths) != n or len(cfg.ranks) != n:
        raise ValueError(
            "synthetic.cardinalities, strengths and ranks must be non-empty and of equal length, got "
            f"{len(cfg.cardinalities)}, {len(cfg.strengths)}, {len(cfg.ranks)}"
        )
    if min(cfg.cardinalities) < 1 or min(cfg.ranks) < 1 or min(cfg.strengths) < 0:
        raise ValueError("synthetic cardinalities and ranks must be >= 1 and strengths >= 0")
    if cfg.rows < 1 or cfg.num_dense < 0 or cfg.teacher_dim < 1 or cfg.zipf < 0:
        raise ValueError("synthetic rows and teacher_dim must be >= 1, num_dense and zipf >= 0")
    if max(cfg.cardinalities) > 2**32:
        raise ValueError("synthetic cardinalities must be <= 2^32")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class SyntheticGenerator:
    """The planted teacher and a deterministic, block-wise row generator.

    Args:
        cfg: generator settings.

    Example::

        gen = SyntheticGenerator(SyntheticConfig(rows=1000))
        ids, dense, label = gen.block(0)  # int64 [1000, 8], float64 [1000, 4] (NaN missing), float64 [1000]
    """

    def __init__(self, cfg: SyntheticConfig) -> None:
        _validate(cfg)
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        dim = cfg.teacher_dim
        self.cdfs: List[np.ndarray] = []
        self.embed: List[np.ndarray] = []
        for card, strength, rank in zip(cfg.cardinalities, cfg.strengths, cfg.ranks):
            weights = np.arange(1, card + 1, dtype=np.float64) ** -cfg.zipf
            self.cdfs.append(np.cumsum(weights) / weights.sum())
            table = rng.standard_normal((card, rank))
            proj = rng.standard_normal((rank, dim)) / np.sqrt(rank)
            self.embed.append(strength * table @ proj)
        self.w = rng.standard_normal(dim) / np.sqrt(dim)
        m = cfg.num_dense
        self.dense_coef = np.where(np.arange(m) < (m + 1) // 2, DENSE_STRENGTH, 0.0)
        self.dense_mu = rng.uniform(0.0, 3.0, m)
        self.dense_sigma = rng.uniform(1.0, 2.0, m)
        self.tokens = [self._tokens(card, rng) for card in cfg.cardinalities]
        self.scale, self.bias = self._calibrate()

    @staticmethod
    def _tokens(card: int, rng: np.random.Generator) -> pa.Array:
        codes = (rng.permutation(card).astype(np.uint64) * np.uint64(_SCRAMBLE)) & np.uint64(0xFFFFFFFF)
        return pa.array([f"{c:08x}" for c in codes.tolist()], type=pa.string())

    def _draw(self, rng: np.random.Generator, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """Zipf ids [n, F] and dense latents g [n, m]."""
        ids = np.empty((n, len(self.cdfs)), dtype=np.int64)
        for f, cdf in enumerate(self.cdfs):
            ids[:, f] = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)
        return ids, rng.standard_normal((n, self.cfg.num_dense))

    def raw_logit(self, ids: np.ndarray, latent: np.ndarray) -> np.ndarray:
        """The teacher's logit before scaling and bias, float64 [n]."""
        n, dim = len(ids), self.cfg.teacher_dim
        total = np.zeros((n, dim))
        squares = np.zeros(n)
        for f, strength in enumerate(self.cfg.strengths):
            if strength > 0:
                z = self.embed[f][ids[:, f]]
                total += z
                squares += np.einsum("nd,nd->n", z, z)
        pairs = (np.einsum("nd,nd->n", total, total) - squares) / 2.0
        return total @ self.w + pairs / np.sqrt(dim) + latent @ self.dense_coef

    def _calibrate(self) -> Tuple[float, float]:
        rng = np.random.default_rng([self.cfg.seed, 2])
        raw = self.raw_logit(*self._draw(rng, CALIBRATION_ROWS))
        std = float(raw.std())
        scale = LOGIT_STD / std if std > 1e-12 else 0.0
        centred = scale * (raw - raw.mean())
        low, high = -30.0, 30.0
        for _ in range(80):
            mid = (low + high) / 2
            low, high = (mid, high) if _sigmoid(centred + mid).mean() < POSITIVE_RATE else (low, mid)
        return scale, (low + high) / 2 - scale * float(raw.mean())

    @property
    def num_blocks(self) -> int:
        return -(-self.cfg.rows // BLOCK_ROWS)

    def block(self, b: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``[b * BLOCK_ROWS, ...)``: (ids [n, F], dense values [n, m] with NaN missing, labels [n])."""
        n = min(BLOCK_ROWS, self.cfg.rows - b * BLOCK_ROWS)
        rng = np.random.default_rng([self.cfg.seed, 1, b])
        ids, latent = self._draw(rng, n)
        dense = np.floor(np.exp(self.dense_mu + self.dense_sigma * latent))
        dense[rng.random(dense.shape) < MISSING_RATE] = np.nan
        prob = _sigmoid(self.scale * self.raw_logit(ids, latent) + self.bias)
        label = (rng.random(n) < prob).astype(np.float64)
        return ids, dense, label

    def planted(self) -> Dict[str, Dict[str, float]]:
        """Strength and rank per field name (``C1..Cn``, then ``I1..Im`` with rank 1)."""
        out: Dict[str, Dict[str, float]] = {}
        for f, (strength, rank) in enumerate(zip(self.cfg.strengths, self.cfg.ranks)):
            out[f"C{f + 1}"] = {"strength": float(strength), "rank": int(rank)}
        for j, coef in enumerate(self.dense_coef):
            out[f"I{j + 1}"] = {"strength": float(coef), "rank": 1}
        return out


class SyntheticReader(RawReader):
    """The synthetic generator as a raw source: ``I1..Im`` numerical, ``C1..Cn`` categorical, binary label.

    Args:
        cfg: generator settings.

    Example::

        prepare(PrepareConfig(source="synthetic", synthetic=SyntheticConfig(rows=10_000), output="data/syn"))
    """

    name = "synthetic"

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.generator = SyntheticGenerator(cfg)
        self.cfg = cfg

    @property
    def schema_hint(self) -> RawSchema:
        fields = tuple(RawField(f"I{j + 1}", RawKind.NUMERICAL) for j in range(self.cfg.num_dense))
        cards = range(len(self.cfg.cardinalities))
        fields += tuple(RawField(f"C{f + 1}", RawKind.CATEGORICAL) for f in cards)
        return RawSchema(fields=fields, label=LabelKind.BINARY, has_time=False)

    def chunks(self, chunk_rows: int, budget: BadRowBudget) -> Iterator[RawChunk]:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        gen = self.generator
        for b in range(gen.num_blocks):
            ids, dense, label = gen.block(b)
            columns: Dict[str, np.ndarray] = {f"I{j + 1}": dense[:, j] for j in range(dense.shape[1])}
            for f in range(ids.shape[1]):
                columns[f"C{f + 1}"] = text_series(gen.tokens[f].take(ids[:, f]))
            frame = pd.DataFrame(columns)
            lines = np.arange(b * BLOCK_ROWS + 1, b * BLOCK_ROWS + 1 + len(label), dtype=np.int64)
            for start in range(0, len(label), chunk_rows):
                stop = start + chunk_rows
                yield RawChunk(
                    features=frame.iloc[start:stop].reset_index(drop=True),
                    label=label[start:stop],
                    lines=lines[start:stop],
                    file="<synthetic>",
                )

    def source(self) -> Dict[str, Any]:
        return {"reader": self.name, "rows": self.cfg.rows, "seed": self.cfg.seed}

    def extra_meta(self) -> Dict[str, Any]:
        return {"planted": self.generator.planted()}
