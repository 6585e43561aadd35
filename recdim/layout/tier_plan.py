"""The mixed-dimension plan of one table: tiers, column maps, the id remap and the bytes they cost.

Row i of a K-wide table keeps a set of columns C_i. Its plan stores the kept values in a few dense
**tiers** (ordinary TorchRec tables of width d_j, a multiple of 4), each with a **column map** saying which
of the K columns its slots fill, and an **id remap** sending every original id to a row of the concatenated
tiers (tier j holds rows ``[offset_j, offset_j + n_j)``) or to "dropped" (-1). Rows keep their original
id order inside a tier, so ``local row = global row - offset_j``.

Two column-map kinds (see :class:`TierPlan`):

- shared ``[d]``: every row of the tier keeps the same columns; pooled tier outputs are scattered once
  per bag (scatter commutes with pooling);
- per-row ``[n, d]``: rows keep different columns; values are scattered per id before pooling (free for
  single-valued features, through an EmbeddingCollection for multi-valued ones).

A map entry is a column in ``[0, K)`` or -1 (padding: the slot stays zero and receives no gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Union

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

PAD = -1
TIER_TABLE_SEP = "__tier"
TIER_FEATURE_SEP = "@@tier"


def tier_table_name(table: str, j: int) -> str:
    """Name of tier ``j`` of ``table`` (``<table>__tier<j>``)."""
    return f"{table}{TIER_TABLE_SEP}{j}"


def tier_feature_name(feature: str, j: int) -> str:
    """The KJT key that tier ``j`` of ``feature``'s table reads (``<feature>@@tier<j>``)."""
    return f"{feature}{TIER_FEATURE_SEP}{j}"


def smallest_int_dtype(lo: int, hi: int) -> torch.dtype:
    """The narrowest signed integer dtype holding every value in ``[lo, hi]``."""
    for dt in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    return torch.int64


def nbytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's elements."""
    return t.numel() * t.element_size()


@dataclass(frozen=True, eq=False)
class TierPlan:
    """One tier: a dense ``[num_rows, width]`` table and where its slots go in the K-wide vector.

    Args:
        name: table name (``<table>__tier<j>``).
        feature_name: the KJT key it reads (``<feature>@@tier<j>``).
        width: d, a multiple of 4.
        num_rows: n >= 1.
        column_map: ``[d]`` (shared by all rows) or ``[n, d]`` (per row); int8 (K <= 128) or int16;
            entries are columns in ``[0, K)`` or -1 for padding, kept columns first in ascending order.
    """

    name: str
    feature_name: str
    width: int
    num_rows: int
    column_map: torch.Tensor

    @property
    def shared(self) -> bool:
        """True when all rows share one column map (pooled output is scattered once per bag)."""
        return self.column_map.dim() == 1

    @property
    def value_bytes(self) -> int:
        """float32 values, padding included: ``n * d * 4``."""
        return self.num_rows * self.width * 4

    @property
    def map_bytes(self) -> int:
        return nbytes(self.column_map)

    def row_maps(self) -> torch.Tensor:
        """[n, d] column map of every row (the shared map repeated)."""
        return self.column_map.expand(self.num_rows, -1) if self.shared else self.column_map

    def kept_dims(self) -> torch.Tensor:
        """[n] kept columns per row (int64)."""
        return (self.row_maps() >= 0).sum(dim=1)

    def embedding_bag_config(self) -> EmbeddingBagConfig:
        """The tier as an ordinary TorchRec table (sum pooling) that the sharding planner places."""
        return EmbeddingBagConfig(
            name=self.name,
            embedding_dim=self.width,
            num_embeddings=self.num_rows,
            feature_names=[self.feature_name],
            pooling=PoolingType.SUM,
        )


@dataclass(frozen=True, eq=False)
class DenseRemap:
    """One entry per original id: its global tier row, or -1 when dropped.

    Args:
        table: [N] int8 / int16 / int32 (the narrowest that holds ``kept rows - 1``).
    """

    table: torch.Tensor
    kind = "dense"

    @property
    def nbytes(self) -> int:
        return nbytes(self.table)

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {"remap": self.table}

    def global_rows(self, num_embeddings: int) -> torch.Tensor:
        """[N] int64 global tier row per id (-1 dropped)."""
        return self.table.to(torch.int64)


@dataclass(frozen=True, eq=False)
class RunRemap:
    """Runs of consecutive ids that map to consecutive tier rows (or are all dropped).

    Id ``i`` in run r (``starts[r] <= i < starts[r + 1]``) maps to ``bases[r] + i - starts[r]``, or to -1
    when ``bases[r] == -1``. Frequency-blocked masks (contiguous id ranges sharing a column set) need a
    few runs instead of N entries.

    Args:
        starts: [R] first id of each run, ascending, ``starts[0] == 0``.
        bases: [R] global row of each run's first id, -1 for a dropped run.
    """

    starts: torch.Tensor
    bases: torch.Tensor
    kind = "runs"

    @property
    def nbytes(self) -> int:
        return nbytes(self.starts) + nbytes(self.bases)

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {"run_starts": self.starts, "run_bases": self.bases}

    def global_rows(self, num_embeddings: int) -> torch.Tensor:
        ids = torch.arange(num_embeddings)
        r = torch.searchsorted(self.starts.to(torch.int64), ids, right=True) - 1
        base = self.bases.to(torch.int64)[r]
        return torch.where(base >= 0, base + ids - self.starts.to(torch.int64)[r], torch.full_like(ids, PAD))


IdRemap = Union[DenseRemap, RunRemap]


def remap_from_tensors(kind: str, tensors: Dict[str, torch.Tensor]) -> IdRemap:
    """Rebuilds a remap from :meth:`DenseRemap.tensors` / :meth:`RunRemap.tensors` output."""
    if kind == DenseRemap.kind:
        return DenseRemap(tensors["remap"])
    if kind == RunRemap.kind:
        return RunRemap(tensors["run_starts"], tensors["run_bases"])
    raise ValueError(f"unknown remap kind {kind!r}")


@dataclass(frozen=True)
class PlanBytes:
    """Bytes of a table as planned, beside what other layouts of the same mask would cost.

    Args:
        values: tier values (float32, padding included).
        column_maps: shared and per-row column maps.
        remap: the id remap.
        uniform: the K-wide table, ``N * K * 4``.
        csr: ``nnz * (4 + column index bytes) + (N + 1) * 4``.
        coo: ``nnz * (4 + 4 + column index bytes)`` (value, row, column).
        floor: ``nnz * 4 + ceil(N * K / 8)`` (kept values plus a bit mask).
        nnz: kept (row, column) entries.
    """

    values: int
    column_maps: int
    remap: int
    uniform: int
    csr: int
    coo: int
    floor: int
    nnz: int

    @property
    def total(self) -> int:
        return self.values + self.column_maps + self.remap

    @property
    def compression(self) -> float:
        """Uniform bytes over planned bytes (``inf`` when nothing is stored)."""
        return self.uniform / self.total if self.total else float("inf")

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            k: getattr(self, k) for k in ("values", "column_maps", "remap", "uniform", "csr", "coo", "floor", "nnz")
        }
        d["total"] = self.total
        d["compression"] = self.compression
        return d


@dataclass(frozen=True, eq=False)
class TablePlan:
    """The mixed-dimension layout of one K-wide table.

    Args:
        name: the original table name (tiers are ``<name>__tier<j>``).
        feature: the feature the table embeds.
        num_embeddings: N, original ids.
        embedding_dim: K.
        tiers: the tiers, in global row order.
        remap: original id -> global tier row or -1.

    Example::

        plan = plan_table(mask, "t_user", "user", PlannerConfig(max_tiers=3))
        plan.bytes().total, [t.width for t in plan.tiers]
        plan.tier_configs()          # EmbeddingBagConfigs t_user__tier0, ...
    """

    name: str
    feature: str
    num_embeddings: int
    embedding_dim: int
    tiers: Tuple[TierPlan, ...]
    remap: IdRemap

    def __post_init__(self) -> None:
        for t in self.tiers:
            if t.width % 4 or t.width <= 0 or t.num_rows <= 0:
                raise ValueError(
                    f"tier {t.name}: width {t.width} must be a positive multiple of 4, rows {t.num_rows} >= 1"
                )
            if t.column_map.shape[-1] != t.width or (not t.shared and t.column_map.shape[0] != t.num_rows):
                raise ValueError(
                    f"tier {t.name}: column map shape {tuple(t.column_map.shape)} "
                    f"does not fit [{t.num_rows}, {t.width}]"
                )

    @property
    def tier_offsets(self) -> List[int]:
        """[T + 1] first global row of each tier, then the number of kept rows."""
        out = [0]
        for t in self.tiers:
            out.append(out[-1] + t.num_rows)
        return out

    @property
    def kept_rows(self) -> int:
        return self.tier_offsets[-1]

    @property
    def dropped_rows(self) -> int:
        return self.num_embeddings - self.kept_rows

    def global_rows(self) -> torch.Tensor:
        """[N] int64 global tier row per original id (-1 dropped)."""
        return self.remap.global_rows(self.num_embeddings)

    def row_ids(self) -> torch.Tensor:
        """[kept rows] int64 original id of every global tier row."""
        g = self.global_rows()
        ids = torch.nonzero(g >= 0).squeeze(1)
        out = torch.empty(self.kept_rows, dtype=torch.int64)
        out[g[ids]] = ids
        return out

    def row_maps(self) -> List[torch.Tensor]:
        """Per tier, the [n_j, d_j] column map of each of its rows."""
        return [t.row_maps() for t in self.tiers]

    def mask(self) -> torch.Tensor:
        """[N, K] bool: the kept entries this plan stores."""
        out = torch.zeros(self.num_embeddings, self.embedding_dim + 1, dtype=torch.bool)
        ids, offsets = self.row_ids(), self.tier_offsets
        for j, maps in enumerate(self.row_maps()):
            rows = ids[offsets[j] : offsets[j + 1]].unsqueeze(1).expand_as(maps)
            cols = torch.where(maps >= 0, maps.to(torch.int64), self.embedding_dim)
            out[rows, cols] = True
        return out[:, : self.embedding_dim]

    def kept_dims(self) -> torch.Tensor:
        """[N] int64 kept columns per original id (0 for dropped ids)."""
        out = torch.zeros(self.num_embeddings, dtype=torch.int64)
        if self.kept_rows:
            out[self.row_ids()] = torch.cat([t.kept_dims() for t in self.tiers])
        return out

    def tier_configs(self) -> List[EmbeddingBagConfig]:
        """Every tier as an EmbeddingBagConfig (``<name>__tier<j>`` reading ``<feature>@@tier<j>``)."""
        return [t.embedding_bag_config() for t in self.tiers]

    def bytes(self) -> PlanBytes:
        """Bytes by kind, and the uniform / CSR / COO / floor costs of the same mask."""
        N, K = self.num_embeddings, self.embedding_dim
        nnz = int(sum(int(t.kept_dims().sum()) for t in self.tiers))
        col_idx = torch.empty(0, dtype=smallest_int_dtype(0, max(K - 1, 0))).element_size()
        return PlanBytes(
            values=sum(t.value_bytes for t in self.tiers),
            column_maps=sum(t.map_bytes for t in self.tiers),
            remap=self.remap.nbytes,
            uniform=N * K * 4,
            csr=nnz * (4 + col_idx) + (N + 1) * 4,
            coo=nnz * (4 + 4 + col_idx),
            floor=nnz * 4 + (N * K + 7) // 8,
            nnz=nnz,
        )

    def tensors(self) -> Dict[str, torch.Tensor]:
        """The plan's stored index tensors: ``tier<j>.column_map`` and the remap's tensors."""
        out = {f"tier{j}.column_map": t.column_map for j, t in enumerate(self.tiers)}
        out.update(self.remap.tensors())
        return out
