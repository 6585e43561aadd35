"""Mixed-dimension embeddings (MDE, Ginart et al.): every frequency block of a feature has its own width.

Block b of feature f holds ids ``[start_b, stop_b)`` (ids are sorted by descending train frequency, so a
frequency block is a contiguous id range) in its own TorchRec table ``t_<f>__b<j>`` of shape
``[stop_b - start_b, d_b]``. An id's K-wide embedding is its row lifted to width K:

- ``0 < d_b < K`` with a projection: ``e_i = W_b[i - start_b] @ P_b``, P_b ∈ R^(d_b × K) learnable;
- ``0 < d_b < K`` without one: the row is zero-padded to K (prefix dimensions, as the tier tables);
- ``d_b = K``: the row as is; ``d_b = 0``: no table, the id reads zeros.

Lookup of a KJT: every id is routed to the KJT key of its block (re-based to the block's first id), one
EmbeddingBagCollection pools every block's bag (fused FBGEMM kernels; DMP shards the tables), and the
pooled ``[B, d_b]`` rows are lifted and summed over the feature's blocks. Lifting is linear, so lifting
the pooled row equals pooling the lifted rows: exact for sum, weighted sum and mean pooling (mean
divides by the whole bag's length, ids in ``d_b = 0`` blocks included). A feature's pooled blocks sit side
by side in the EBC's output, so one product ``[B, sum_b d_b] @ [sum_b d_b, K]`` lifts and sums them all
(the stacked lifts: P_b, or the first d_b rows of I_K).

Cost: the pooled output is ``sum_b d_b`` wide per feature (up to L times K): every bag is pooled once per
block, empty or not, as in DNIS's block splitting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F_
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.config import ModelConfig
from recdim.layout.mixed_dim_blocks import (  # noqa: F401  (re-exported)
    BlockRouting,
    Segment,
    block_key,
    blocks_from_assignment,
    check_blocks,
)
from recdim.modules.provider import EmbeddingProvider
from recdim.modules.uniform import table_name


@dataclass
class _Layout:
    """How the pooled columns of one EBC output key order are lifted (see ``_lift_layout``)."""

    keys: Tuple[str, ...]
    perm: Optional[torch.Tensor]
    ranges: List[Tuple[int, int]]
    rows: torch.Tensor


class MixedDimensionProvider(EmbeddingProvider):
    """One TorchRec table per (feature, block) at the block's width, lifted to K by its projection.

    Tables are ``t_<f>__b<j>`` (j: the block's position among ``f``'s non-empty blocks) in ``self.ebc``;
    projections of width d are stacked in ``self.projections["w<d>"]`` ([n_d, d, K], xavier-uniform
    initialised from the global RNG, as DLRM's ``PrEmbeddingBag``), dense parameters trained by the
    dense optimizer. Ids must lie in ``[0, N_f)`` (not checked).

    Args:
        num_embeddings: rows per feature (``{feature: n}``), in output order.
        embedding_dim: K.
        blocks: tile every feature's ids in order (:func:`check_blocks`); empty blocks are skipped.
        pooling: ``"sum"`` or ``"mean"``.
        is_weighted: features carry per-value weights.
        device: where tables are allocated (``meta`` to let DMP materialise them sharded); projections
            and buffers live on the CPU then, and DMP moves them with the dense parameters.

    Call:
        features (KeyedJaggedTensor): keys ``feature_names``, batch size B.

    Returns:
        KeyedTensor: values [B, F * K].

    Example::

        blocks = [Segment("user", 0, 100, 16), Segment("user", 100, 944, 4, projected=True),
                  Segment("item", 0, 1683, 8, projected=True)]
        provider = MixedDimensionProvider({"user": 944, "item": 1683}, 16, blocks)
        kt = provider(kjt)        # [B, 2 * 16]; tables t_user__b0 [100, 16], t_user__b1 [844, 4], ...
    """

    def __init__(
        self,
        num_embeddings: Dict[str, int],
        embedding_dim: int,
        blocks: Sequence[Segment],
        pooling: str = "sum",
        is_weighted: bool = False,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(list(num_embeddings), embedding_dim)
        check_blocks(blocks, num_embeddings, embedding_dim)
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.is_weighted = is_weighted
        K = embedding_dim
        buf_device = device if device is not None and device.type != "meta" else torch.device("cpu")

        r = BlockRouting.build(blocks, num_embeddings)
        self.blocks: List[Segment] = r.blocks  # non-empty, in (feature, id) order
        self._keys: List[str] = r.keys  # per block, its KJT key
        self._slot_keys = r.slot_keys
        self.tables: List[EmbeddingBagConfig] = [
            EmbeddingBagConfig(
                name=table_name(r.keys[i]),
                embedding_dim=r.blocks[i].dim,
                num_embeddings=r.blocks[i].rows,
                feature_names=[r.keys[i]],
                pooling=PoolingType.SUM,
            )
            for i in r.stored
        ]
        # Projections of width d stacked in one [n_d, d, K] parameter (ascending d, so that they draw the
        # same values from the global RNG); lifting reads rows r.lift_rows of [every projection's rows; I_K].
        self.projections = nn.ParameterDict()
        self._proj_index: Dict[str, Tuple[str, int]] = {}  # block key -> (width key, position)
        for d in r.widths:
            slots = r.projected_slots[d]
            bound = (6.0 / (d + K)) ** 0.5
            self.projections[f"w{d}"] = nn.Parameter(
                torch.empty(len(slots), d, K, device=buf_device).uniform_(-bound, bound)
            )
            for k, slot in enumerate(slots):
                self._proj_index[self._slot_keys[slot]] = (f"w{d}", k)
        self._lift_rows = r.lift_rows
        self.register_buffer("_eye", torch.eye(K, device=buf_device), persistent=False)
        self._slot_feature = r.slot_feature
        # After the projections: they draw the same values whatever device the tables are built on.
        self.ebc = (
            EmbeddingBagCollection(tables=self.tables, is_weighted=is_weighted, device=device) if r.stored else None
        )
        # Global id (feature offset + id) -> block by one searchsorted over block starts.
        self._drops = r.drops
        for name, values in (
            ("_feature_offsets", r.feature_offsets),
            ("_block_starts", r.block_starts),
            ("_slot_of_block", r.slot_of_block),
        ):
            self.register_buffer(name, torch.tensor(values, dtype=torch.int64, device=buf_device), persistent=False)
        self._layout: Optional[_Layout] = None

    # ----------------------------------------------------------------------------- blocks

    def projection_index(self, key: str) -> Optional[Tuple[str, int]]:
        """Where block ``key``'s projection lives: ``(name in self.projections, position)``, or None."""
        return self._proj_index.get(key)

    def projection(self, key: str) -> Optional[torch.Tensor]:
        """The ``[d, K]`` projection of block ``key`` (``<feature>__b<j>``), None for an unprojected one."""
        at = self.projection_index(key)
        return None if at is None else self.projections[at[0]][at[1]]

    def block_keys(self) -> List[Tuple[Segment, str]]:
        """``(block, key)`` of every non-empty block, in (feature, id) order."""
        return list(zip(self.blocks, self._keys))

    def lift(self, key: str, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``[..., d]`` of block ``key`` lifted to ``[..., K]`` (projection, zero padding or as is)."""
        p = self.projection(key)
        if p is not None:
            return rows @ p.to(rows.dtype)
        return F_.pad(rows, (0, self._embedding_dim - rows.size(-1)))

    # ----------------------------------------------------------------------------- lookup

    def _route(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The ids moved to their block's key and re-based to its first id; ids of d = 0 blocks dropped."""
        ids, lengths = features.values().to(torch.int64), features.lengths()
        B, F = features.stride(), len(self._feature_names)
        dev = ids.device
        seg = torch.repeat_interleave(torch.arange(F * B, device=dev), lengths.to(torch.int64), output_size=ids.numel())
        gid = self._feature_offsets.to(dev).index_select(0, torch.div(seg, B, rounding_mode="floor")) + ids
        starts = self._block_starts.to(dev)
        blk = torch.searchsorted(starts, gid, right=True) - 1
        local = gid - starts.index_select(0, blk)
        slot = self._slot_of_block.to(dev).index_select(0, blk)
        weights = features.weights_or_none()
        if self._drops:
            kept = torch.nonzero(slot >= 0).squeeze(1)
            slot, local, seg = slot.index_select(0, kept), local.index_select(0, kept), seg.index_select(0, kept)
            weights = None if weights is None else weights.index_select(0, kept)
        key, order = torch.sort(slot * B + torch.remainder(seg, B), stable=True)
        counts = torch.bincount(key, minlength=len(self._slot_keys) * B).to(lengths.dtype)
        return KeyedJaggedTensor(
            keys=self._slot_keys,
            values=local.index_select(0, order),
            lengths=counts,
            stride=B,
            weights=None if weights is None else weights.index_select(0, order),
        )

    def _lift_layout(self, kt: KeyedTensor) -> "_Layout":
        """For the EBC's output key order: a column permutation that makes every feature's pooled columns
        contiguous (None when they already are), each feature's column range, and the lift-matrix row
        of every column."""
        keys = tuple(kt.keys())
        if self._layout is None or self._layout.keys != keys:
            widths = kt.length_per_key()
            start = {k: sum(widths[:i]) for i, k in enumerate(keys)}
            slot_of = {k: s for s, k in enumerate(self._slot_keys)}
            order = sorted(keys, key=lambda k: (self._slot_feature[slot_of[k]], keys.index(k)))
            cols = [start[k] + c for k in order for c in range(widths[keys.index(k)])]
            rows = [r for k in order for r in self._lift_rows[slot_of[k]]]
            ranges, pos = [(0, 0)] * len(self._feature_names), 0
            for k in order:
                f, w = self._slot_feature[slot_of[k]], widths[keys.index(k)]
                ranges[f] = (ranges[f][0] if ranges[f][1] else pos, pos + w)
                pos += w
            dev = self._eye.device
            perm = None if cols == list(range(len(cols))) else torch.tensor(cols, dtype=torch.int64, device=dev)
            self._layout = _Layout(keys, perm, ranges, torch.tensor(rows, dtype=torch.int64, device=dev))
        return self._layout

    def _lift_matrix(self, rows: torch.Tensor) -> torch.Tensor:
        """[C, K]: per pooled column, its row of the lift matrix R (projections, then I_K)."""
        K = self._embedding_dim
        lift = torch.cat([*(p.view(-1, K) for p in self.projections.values()), self._eye])
        return lift.index_select(0, rows.to(lift.device))

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        names = self._feature_names
        features = self.ordered_features(features)
        if self.is_weighted and features.weights_or_none() is None:
            raise ValueError("this provider is weighted: the KJT needs per-value weights")
        B, F, K = features.stride(), len(names), self._embedding_dim
        if self.ebc is None:
            out = torch.zeros(B, F, K, device=features.values().device)
        else:
            kt = self.ebc(self._route(features))
            pooled = self.table_output(kt.values())  # [B, C], C = sum of block widths
            layout = self._lift_layout(kt)
            if layout.perm is not None:
                pooled = pooled.index_select(1, layout.perm.to(pooled.device))
            lift = self._lift_matrix(layout.rows).to(pooled.device, pooled.dtype)  # [C, K]
            zeros = pooled.new_zeros(B, K)
            # One product per feature: its blocks' pooled rows side by side times their stacked lifts (split,
            # not sliced: a slice's backward would write a [B, C] gradient per feature).
            sizes = [b - a for a, b in layout.ranges]
            out = torch.stack(
                [x @ m if n else zeros for x, m, n in zip(pooled.split(sizes, 1), lift.split(sizes), sizes)], 1
            )
        if self.pooling == "mean":
            lengths = features.lengths().view(F, B).t().clamp(min=1).unsqueeze(-1)
            out = out / lengths.to(out.dtype)
        return KeyedTensor(keys=names, length_per_key=[K] * F, values=out.reshape(B, F * K))

    # ----------------------------------------------------------------------------- accounting

    def effective_weights(self, tables: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Every id's K-wide vector, ``W_b[i - start_b]`` lifted (zeros for d = 0 blocks).

        Args:
            tables: ``{table name: [rows, d]}`` full values of this provider's tables.

        Returns:
            ``{feature: [N, K]}``.
        """
        rows = {f: 0 for f in self._feature_names}
        for b in self.blocks:
            rows[b.feature] = max(rows[b.feature], b.stop)
        out = {f: torch.zeros(n, self._embedding_dim) for f, n in rows.items()}
        with torch.no_grad():
            for b, key in zip(self.blocks, self._keys):
                if b.dim > 0:
                    out[b.feature][b.start : b.stop] = self.lift(key, tables[table_name(key)].float().cpu()).cpu()
        return out

    def projection_params(self) -> int:
        """Values of all projections, sum of d_b * K."""
        return sum(p.numel() for p in self.projections.values())

    def embedding_params(self) -> int:
        """Table values (sum of rows_b * d_b) plus projection values."""
        return sum(t.num_embeddings * t.embedding_dim for t in self.tables) + self.projection_params()

    def embedding_bytes(self) -> int:
        """float32 tables and projections, plus the block boundaries (int64, one start per block and
        one end per feature)."""
        return 4 * self.embedding_params() + 8 * (len(self.blocks) + len(self._feature_names))


def mixed_dim_provider_factory(
    blocks: Sequence[Segment], embedding_dim: int
) -> Callable[[ModelConfig, Dict[str, int], bool, torch.device], EmbeddingProvider]:
    """A ``ProviderFactory`` (see :mod:`recdim.train.build`) building a :class:`MixedDimensionProvider`.

    Args:
        blocks: the blocks of every feature the model may use (a model over fewer features takes
            theirs).
        embedding_dim: K the blocks were made for; must equal the model's.

    Returns:
        ``factory(model_cfg, num_embeddings, weighted, device) -> provider``; it checks that the blocks
        tile the model's tables.

    Example::

        session = open_session(cfg, mixed_dim_provider_factory(blocks_from_assignment(a), a.embedding_dim))
    """

    def factory(
        cfg: ModelConfig, num_embeddings: Dict[str, int], weighted: bool, device: torch.device
    ) -> EmbeddingProvider:
        if cfg.embedding_dim != embedding_dim:
            raise ValueError(f"the blocks are for K = {embedding_dim}, the model wants K = {cfg.embedding_dim}")
        missing = sorted(set(num_embeddings) - {b.feature for b in blocks})
        if missing:
            raise ValueError(f"no dimension blocks for features {missing}")
        chosen = [b for b in blocks if b.feature in num_embeddings]
        return MixedDimensionProvider(num_embeddings, embedding_dim, chosen, cfg.pooling, weighted, device)

    return factory
