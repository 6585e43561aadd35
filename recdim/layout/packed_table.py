"""A table's kept values at the byte floor: the stored (serving) form of a :class:`TablePlan` and its values.

Training stores a table as tiers of multiple-of-4 widths with column maps and an id remap (FBGEMM's TBE
needs those widths); that is a kernel rule, not a storage rule. The packed form keeps only what the
plan means:

- ``rows.kept``: a :class:`~recdim.layout.bitmap.RankBitmap` over the N ids (one bit per id); an id's rank
  among the kept ids is its row in everything below. Dropped rows cost one bit.
- the mask of the R kept rows, the smallest of three kinds that fits:

  - ``prefix``: every kept row keeps columns ``0..k-1`` (frequency-blocked and prefix masks): only the
    kept widths;
  - ``sets``: any columns (elementwise masks, K <= 64): the kept widths, and each row's set of columns as
    its rank among the sets of that size (:mod:`~recdim.layout.subset_rank`, ``mask.ranks``:
    ``ceil(log2 C(K, k))`` bits per row, below one bit per slot unless rows keep about half their columns);
  - ``bits``: any columns: one bit per (kept row, column) slot, row-major (``mask.bits``).

  Kept widths (``k - 1`` per kept row, ``ceil(log2 K)`` bits) are stored packed or as runs of equal widths
  over consecutive kept rows, whichever is smaller (:mod:`~recdim.layout.row_lengths`): ids ordered by
  frequency keep one width over long ranges, so runs cost a few bytes per table.

- ``values``: the nnz kept values, jagged: kept rows in id order, each row's values in ascending column
  order, in a :mod:`~recdim.layout.value_codec` codec (float32, float16 or int8 row-wise).
- the tiers (name, width, rows; a shared tier's column map ``tier<j>.column_map``), so loading rebuilds
  the same plan. Which tier a kept row sits in follows a rule (:func:`rule_tiers`: the shared tier whose
  columns are exactly the row's, else the narrowest per-row tier wide enough, the planner's own
  placement); a plan that places rows otherwise stores each kept row's tier in ``rows.tier``
  (``ceil(log2 T)`` bits per kept row).

Stored bytes: ``nnz * value bytes (+ 4 per kept row for int8) + ceil(N / 8) + mask + shared maps``, against
the floor ``nnz * 4 + ceil(N * K / 8)`` (see :class:`~recdim.layout.tier_plan.PlanBytes`), which the
``bits`` mask alone reaches up to the kept-row bitmap.

Example::

    packed = pack_table(plan, tier_values(plan, weight), "float16")
    packed.tensors()                       # {"rows.kept", "lengths.packed", "mask.ranks", "values", ...}
    packed.stored_bytes()["total"] <= plan.bytes().floor + packed.kept.nbytes
    mask, values = packed.row_mask(), packed.values_float()      # [R, K] bool, [nnz] float32
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from recdim.layout.bitmap import RankBitmap
from recdim.layout.bitpack import bits_for, pack_bools, pack_uint, packed_size, unpack_bools, unpack_uint
from recdim.layout.row_lengths import LENGTH_KINDS, decode_lengths, encode_lengths
from recdim.layout.row_lengths import tensor_specs as length_specs
from recdim.layout.subset_rank import MAX_K, pack_ranks, packed_rank_bytes, unpack_ranks
from recdim.layout.tier_plan import PAD, TablePlan, nbytes
from recdim.layout.tier_values import masked_table
from recdim.layout.value_codec import VALUE_DTYPES, decode_values, encode_values, tensor_specs

MASK_KINDS = ("prefix", "sets", "bits")
KEPT = "rows.kept"
TIER_INDEX = "rows.tier"
MASK_TENSOR = {"sets": "mask.ranks", "bits": "mask.bits"}
_MAP_DTYPES = {"int8": torch.int8, "int16": torch.int16}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True, eq=False)
class PackedTier:
    """One tier as stored: its TorchRec names, width and row count, and its column map when shared.

    Args:
        name: the tier table's name (``<table>__tier<j>``).
        feature_name: the KJT key it reads.
        width: d, the tier's width when rebuilt (a multiple of 4).
        rows: rows it holds.
        column_map: ``[d]`` int8 / int16 for a shared tier (kept columns, -1 padding); None for a per-row
            tier (its rows' maps are their kept columns ascending, then -1, rebuilt from the mask).
    """

    name: str
    feature_name: str
    width: int
    rows: int
    column_map: Optional[torch.Tensor]

    @property
    def shared(self) -> bool:
        return self.column_map is not None

    def columns(self, K: int) -> torch.Tensor:
        """[K] bool: the columns a shared tier keeps."""
        out = torch.zeros(K + 1, dtype=torch.bool)
        assert self.column_map is not None
        out[torch.where(self.column_map >= 0, self.column_map.to(torch.int64), K)] = True
        return out[:K]


def rule_tiers(row_mask: torch.Tensor, tiers: Sequence[PackedTier]) -> torch.Tensor:
    """The tier each kept row sits in by the default placement: the first shared tier whose columns are
    exactly the row's, else the narrowest per-row tier at least as wide as the row's kept count (the
    first of equal widths).

    Args:
        row_mask: [R, K] bool, the kept rows' masks.
        tiers: the table's tiers.

    Returns:
        Tensor: [R] int64 tier index, -1 for a row no tier takes.
    """
    R, K = row_mask.shape
    out = torch.full((R,), -1, dtype=torch.int64)
    for j, t in enumerate(tiers):
        if t.shared:
            hit = (out < 0) & (row_mask == t.columns(K)).all(dim=1)
            out[hit] = j
    k = row_mask.sum(dim=1)
    for j in sorted((j for j, t in enumerate(tiers) if not t.shared), key=lambda j: (tiers[j].width, j)):
        out[(out < 0) & (k <= tiers[j].width)] = j
    return out


@dataclass(frozen=True, eq=False)
class PackedTable:
    """One table at the byte floor (see the module docstring).

    Args:
        name: the table's name.
        feature: the feature it embeds.
        num_embeddings: N.
        embedding_dim: K.
        kept: [N] kept rows (rows keeping at least one column).
        mask_kind: ``"prefix"``, ``"sets"`` or ``"bits"``.
        lengths: the kept widths' tensors (``prefix`` and ``sets``; empty for ``bits``).
        mask: uint8, the packed subset ranks (``sets``) or slot bits (``bits``); empty for ``prefix``.
        value_dtype: the values' codec.
        values: the codec's tensors (``values`` [nnz], and ``scale`` / ``bias`` [R] for int8).
        tiers: the tiers, in global row order.
        tier_index: None when rows follow :func:`rule_tiers`, else the packed tier of every kept row.

    Raises:
        ValueError: the parts do not fit together (sizes, popcounts, rows no tier takes).
    """

    name: str
    feature: str
    num_embeddings: int
    embedding_dim: int
    kept: RankBitmap
    mask_kind: str
    lengths: Mapping[str, torch.Tensor]
    mask: torch.Tensor
    value_dtype: str
    values: Mapping[str, torch.Tensor]
    tiers: Tuple[PackedTier, ...]
    tier_index: Optional[torch.Tensor] = None
    _row_mask: Optional[torch.Tensor] = field(init=False, repr=False, default=None)

    # ------------------------------------------------------------------ sizes

    @property
    def kept_rows(self) -> int:
        return self.kept.count

    @property
    def width_bits(self) -> int:
        """Bits per stored kept width (it stores ``k - 1``)."""
        return bits_for(max(self.embedding_dim - 1, 0))

    @property
    def lengths_kind(self) -> Optional[str]:
        """``"packed"`` or ``"runs"`` (None for a ``bits`` mask, whose widths are its popcounts)."""
        if not self.lengths:
            return None
        return "runs" if "lengths.run_ends" in self.lengths else "packed"

    @property
    def length_runs(self) -> int:
        return int(self.lengths["lengths.run_ends"].numel()) if self.lengths_kind == "runs" else 0

    @property
    def tier_bits(self) -> int:
        return bits_for(max(len(self.tiers) - 1, 0))

    @property
    def nnz(self) -> int:
        return int(self.values["values"].numel())

    def row_mask(self) -> torch.Tensor:
        """[R, K] bool: the kept rows' columns (decoded once, then cached)."""
        if self._row_mask is None:
            R, K = self.kept_rows, self.embedding_dim
            if self.mask_kind == "prefix":
                mask = torch.arange(K).unsqueeze(0) < self.row_lengths().unsqueeze(1)
            elif self.mask_kind == "sets":
                mask = unpack_ranks(self.mask, self.row_lengths(), K)
            else:
                mask = unpack_bools(self.mask, R * K).view(R, K)
            object.__setattr__(self, "_row_mask", mask)
        return self._row_mask  # type: ignore[return-value]

    def row_lengths(self) -> torch.Tensor:
        """[R] int64 kept columns per kept row."""
        kind = self.lengths_kind
        if kind is None:
            return self.row_mask().sum(dim=1)
        return decode_lengths(kind, dict(self.lengths), self.kept_rows, self.width_bits, self.length_runs) + 1

    def values_float(self) -> torch.Tensor:
        """[nnz] float32 kept values (jagged, see the module docstring)."""
        return decode_values(self.values, self.row_lengths(), self.value_dtype)

    def row_tiers(self) -> torch.Tensor:
        """[R] int64 tier of every kept row (-1 where the rule places none)."""
        if self.tier_index is not None:
            return unpack_uint(self.tier_index, self.kept_rows, self.tier_bits)
        return rule_tiers(self.row_mask(), self.tiers)

    def dense(self) -> torch.Tensor:
        """[N, K] float32: the masked K-wide table (kept values, zeros elsewhere)."""
        N, K = self.num_embeddings, self.embedding_dim
        out = torch.zeros(N, K)
        rows = torch.zeros(self.kept_rows, K)
        rows[self.row_mask()] = self.values_float()
        out[self.kept.set_ids()] = rows
        return out

    # ------------------------------------------------------------------ storage

    def tensors(self) -> Dict[str, torch.Tensor]:
        """What the table's file holds: ``rows.kept``, ``mask.widths`` / ``mask.bits``, the codec's
        tensors, each shared tier's ``tier<j>.column_map`` and, when the rule does not place the rows,
        ``rows.tier``."""
        out = {KEPT: self.kept.bits, **dict(self.lengths), **dict(self.values)}
        if self.mask_kind in MASK_TENSOR:
            out[MASK_TENSOR[self.mask_kind]] = self.mask
        for j, t in enumerate(self.tiers):
            if t.column_map is not None:
                out[f"tier{j}.column_map"] = t.column_map
        if self.tier_index is not None:
            out[TIER_INDEX] = self.tier_index
        return out

    def header(self) -> Dict[str, Any]:
        """The JSON-ready description :meth:`from_tensors` rebuilds the table from."""
        return {
            "name": self.name,
            "feature": self.feature,
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "kept_rows": self.kept_rows,
            "dropped_rows": self.num_embeddings - self.kept_rows,
            "nnz": self.nnz,
            "mask": self.mask_kind,
            "lengths": self.lengths_kind,
            "length_runs": self.length_runs,
            "values_dtype": self.value_dtype,
            "tier_assignment": "rule" if self.tier_index is None else "explicit",
            "tiers": [
                {
                    "name": t.name,
                    "feature_name": t.feature_name,
                    "width": t.width,
                    "rows": t.rows,
                    "column_map": "shared" if t.shared else "per_row",
                    **({"map_dtype": _dtype_name(t.column_map.dtype)} if t.column_map is not None else {}),
                }
                for t in self.tiers
            ],
        }

    def stored_bytes(self) -> Dict[str, int]:
        """Bytes as stored, by kind: ``values``, ``scales`` (int8 scale + bias), ``mask``, ``rows`` (the
        kept bitmap), ``tiers`` (shared maps and ``rows.tier``), and their ``total``."""
        maps = sum(nbytes(t.column_map) for t in self.tiers if t.column_map is not None)
        out = {
            "values": nbytes(self.values["values"]),
            "scales": sum(nbytes(v) for k, v in self.values.items() if k != "values"),
            "mask": nbytes(self.mask) + sum(nbytes(v) for v in self.lengths.values()),
            "rows": nbytes(self.kept.bits),
            "tiers": maps + (nbytes(self.tier_index) if self.tier_index is not None else 0),
        }
        out["total"] = sum(out.values())
        return out

    @classmethod
    def from_tensors(cls, header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> "PackedTable":
        """Rebuilds a table from :meth:`header` and :meth:`tensors`, checking every field against them.

        Raises:
            ValueError: a missing, extra or misshapen tensor, or one that contradicts the header (the
                message names the tensor or field).
            KeyError: a header field is missing.
        """
        N, K, R = int(header["num_embeddings"]), int(header["embedding_dim"]), int(header["kept_rows"])
        nnz, kind, vdt = int(header["nnz"]), header["mask"], header["values_dtype"]
        if N < 0 or K < 1 or not 0 <= R <= N or int(header["dropped_rows"]) != N - R or nnz < R or nnz > R * K:
            raise ValueError(
                f"inconsistent sizes N={N} K={K} kept_rows={R} dropped_rows={header['dropped_rows']} nnz={nnz}"
            )
        if kind not in MASK_KINDS:
            raise ValueError(f"mask kind {kind!r}; expected one of {', '.join(MASK_KINDS)}")
        if vdt not in VALUE_DTYPES:
            raise ValueError(f"values_dtype {vdt!r}; expected one of {', '.join(VALUE_DTYPES)}")
        if header["tier_assignment"] not in ("rule", "explicit"):
            raise ValueError(f"tier_assignment {header['tier_assignment']!r}; expected 'rule' or 'explicit'")
        tier_specs = list(header["tiers"])
        lkind, runs = header["lengths"], int(header["length_runs"])
        if (lkind is None) != (kind == "bits") or (lkind is not None and lkind not in LENGTH_KINDS):
            raise ValueError(f"lengths {lkind!r} does not fit mask kind {kind!r}")
        if kind == "sets" and K > MAX_K:
            raise ValueError(f"mask kind 'sets' needs K <= {MAX_K}, got {K}")
        if runs < 0 or runs > R or (lkind != "runs" and runs):
            raise ValueError(f"length_runs {runs} does not fit {R} kept rows stored {lkind}")
        expect: Dict[str, Tuple[torch.dtype, List[int]]] = {
            KEPT: (torch.uint8, [packed_size(N, 1)]),
            **tensor_specs(vdt, nnz, R),
        }
        if lkind is not None:
            expect.update(length_specs(lkind, R, bits_for(max(K - 1, 0)), runs))
        if kind == "bits":
            expect[MASK_TENSOR[kind]] = (torch.uint8, [packed_size(R * K, 1)])
        if kind == "sets":  # its size follows from the widths; checked once they are decoded
            expect[MASK_TENSOR[kind]] = (
                torch.uint8,
                [int(tensors[MASK_TENSOR[kind]].numel())] if MASK_TENSOR[kind] in tensors else [-1],
            )
        for j, t in enumerate(tier_specs):
            if t["column_map"] == "shared":
                if t.get("map_dtype") not in _MAP_DTYPES:
                    raise ValueError(f"tier {j}: map_dtype {t.get('map_dtype')!r}; expected int8 or int16")
                expect[f"tier{j}.column_map"] = (_MAP_DTYPES[t["map_dtype"]], [int(t["width"])])
            elif t["column_map"] != "per_row":
                raise ValueError(f"tier {j}: column_map {t['column_map']!r}; expected 'shared' or 'per_row'")
        if header["tier_assignment"] == "explicit":
            expect[TIER_INDEX] = (torch.uint8, [packed_size(R, bits_for(max(len(tier_specs) - 1, 0)))])
        extra = sorted(set(tensors) - set(expect))
        if extra:
            raise ValueError(f"tensors {extra} are not described by the manifest")
        for name, (dtype, shape) in expect.items():
            if name not in tensors:
                raise ValueError(f"tensor {name!r} missing")
            t = tensors[name]
            if t.dtype != dtype or list(t.shape) != shape:
                raise ValueError(
                    f"tensor {name!r} is {_dtype_name(t.dtype)}{list(t.shape)}, the manifest says "
                    f"{_dtype_name(dtype)}{shape}"
                )
        kept = RankBitmap(tensors[KEPT], N)
        if kept.count != R:
            raise ValueError(f"tensor {KEPT!r} marks {kept.count} kept rows, the manifest says {R}")
        tiers = []
        for j, t in enumerate(tier_specs):
            cmap = tensors.get(f"tier{j}.column_map") if t["column_map"] == "shared" else None
            if cmap is not None:
                cols = cmap[cmap >= 0].to(torch.int64)
                if bool((cmap < PAD).any()) or bool((cmap >= K).any()) or cols.numel() == 0:
                    raise ValueError(f"tensor 'tier{j}.column_map' has entries outside [-1, {K}) or keeps nothing")
                if torch.unique(cols).numel() != cols.numel():
                    raise ValueError(f"tensor 'tier{j}.column_map' names a column twice")
            tiers.append(PackedTier(str(t["name"]), str(t["feature_name"]), int(t["width"]), int(t["rows"]), cmap))
        table = cls(
            str(header["name"]),
            str(header["feature"]),
            N,
            K,
            kept,
            kind,
            {k: tensors[k] for k in length_specs(lkind, R, 0, runs)} if lkind is not None else {},
            tensors[MASK_TENSOR[kind]] if kind in MASK_TENSOR else torch.zeros(0, dtype=torch.uint8),
            vdt,
            {k: tensors[k] for k in tensor_specs(vdt, nnz, R)},
            tuple(tiers),
            tensors.get(TIER_INDEX),
        )
        table._check()
        return table

    def _check(self) -> None:
        """Mask, values and tiers agree (raises ValueError)."""
        K = self.embedding_dim
        lengths = self.row_lengths()  # unpacking also refuses set padding bits
        if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > K):
            raise ValueError(f"{self.mask_kind} mask: a kept row keeps no column or more than K={K}")
        if int(lengths.sum()) != self.nnz:
            raise ValueError(f"{self.mask_kind} mask: keeps {int(lengths.sum())} entries, values hold {self.nnz}")
        if self.mask_kind == "sets" and self.mask.numel() != packed_rank_bytes(lengths, K):
            raise ValueError(
                f"tensor 'mask.ranks' is uint8[{self.mask.numel()}], its rows' widths need "
                f"uint8[{packed_rank_bytes(lengths, K)}]"
            )
        if "scale" in self.values:
            for k in ("scale", "bias"):
                if not bool(torch.isfinite(self.values[k]).all()):
                    raise ValueError(f"tensor {k!r} holds non-finite entries")
        tier = self.row_tiers()
        if tier.numel() and (int(tier.min()) < 0 or int(tier.max()) >= len(self.tiers)):
            raise ValueError(f"a kept row fits none of the {len(self.tiers)} tiers")
        counts = torch.bincount(tier, minlength=len(self.tiers)).tolist()
        mask = self.row_mask()
        for j, t in enumerate(self.tiers):
            if counts[j] != t.rows:
                raise ValueError(f"tier {j} ({t.name}) holds {counts[j]} kept rows, the manifest says {t.rows}")
            mine = tier == j
            if t.shared and not bool((mask[mine] == t.columns(K)).all()):
                raise ValueError(f"tier {j} ({t.name}): a row's columns differ from the tier's column map")
            if bool((lengths[mine] > t.width).any()):
                raise ValueError(f"tier {j} ({t.name}): a row keeps more columns than its width {t.width}")


def pack_table(plan: TablePlan, tier_values: Sequence[torch.Tensor], value_dtype: str = "float32") -> PackedTable:
    """The packed form of a plan and its tier values.

    Rows whose tier row keeps nothing (all padding) are dropped; so is a tier left without rows.

    Args:
        plan: the table's plan.
        tier_values: per tier, [n_j, d_j] float.
        value_dtype: ``"float32"`` (exact), ``"float16"`` or ``"int8"`` (see :mod:`~recdim.layout.value_codec`).

    Returns:
        PackedTable: the table as stored.

    Example::

        packed = pack_table(plan, provider.tier_weights()[plan.name], "int8")
    """
    N, K = plan.num_embeddings, plan.embedding_dim
    weight = masked_table(plan, [v.detach().cpu().float() for v in tier_values])
    mask = plan.mask()
    kept = mask.any(dim=1)
    ids = torch.nonzero(kept).squeeze(1)
    row_mask = mask.index_select(0, ids)
    lengths = row_mask.sum(dim=1)
    values = weight[mask]  # row-major: kept rows in id order, columns ascending
    offsets = torch.tensor(plan.tier_offsets, dtype=torch.int64)
    tier = torch.searchsorted(offsets, plan.global_rows().index_select(0, ids), right=True) - 1
    counts = torch.bincount(tier, minlength=len(plan.tiers)).tolist()
    live = [j for j, c in enumerate(counts) if c]
    renumber = torch.full((len(plan.tiers) + 1,), -1, dtype=torch.int64)
    renumber[torch.tensor(live, dtype=torch.int64)] = torch.arange(len(live))
    tier = renumber.index_select(0, tier) if tier.numel() else tier
    tiers = tuple(
        PackedTier(
            plan.tiers[j].name,
            plan.tiers[j].feature_name,
            plan.tiers[j].width,
            counts[j],
            plan.tiers[j].column_map.clone() if plan.tiers[j].shared else None,
        )
        for j in live
    )
    kind, length_tensors, packed_mask = _smallest_mask(row_mask, lengths)
    rule = rule_tiers(row_mask, tiers)
    tier_index = None if torch.equal(rule, tier) else pack_uint(tier, bits_for(max(len(tiers) - 1, 0)))
    stored = encode_values(values, lengths, value_dtype, where=f"table {plan.name}")
    return PackedTable(
        plan.name,
        plan.feature,
        N,
        K,
        RankBitmap.from_bools(kept),
        kind,
        length_tensors,
        packed_mask,
        value_dtype,
        stored,
        tiers,
        tier_index,
    )


def _smallest_mask(row_mask: torch.Tensor, lengths: torch.Tensor) -> Tuple[str, Dict[str, torch.Tensor], torch.Tensor]:
    """The smallest mask kind that holds ``row_mask`` ([R, K]): ``(kind, length tensors, mask tensor)``."""
    K = row_mask.size(1)
    empty = torch.zeros(0, dtype=torch.uint8)
    _, length_tensors = encode_lengths(lengths - 1, bits_for(max(K - 1, 0)))
    length_bytes = sum(nbytes(v) for v in length_tensors.values())
    if bool((row_mask == (torch.arange(K).unsqueeze(0) < lengths.unsqueeze(1))).all()):
        return "prefix", length_tensors, empty
    bits_bytes = packed_size(row_mask.numel(), 1)
    if K <= MAX_K and length_bytes + packed_rank_bytes(lengths, K) < bits_bytes:
        return "sets", length_tensors, pack_ranks(row_mask)
    return "bits", {}, pack_bools(row_mask)
