"""AutoDim candidate dimensions: each feature mixes a few candidate widths with learned weights.

AutoDim (Zhao et al., WWW 2021) gives feature f candidate dimensions d_1 < ... < d_J, maps each candidate
embedding to the common width K, and outputs ``sum_j p_fj * T_fj(e_fj)`` where p_f is a Gumbel-softmax
of the architecture weights alpha_f. After the search each feature keeps ``argmax_j alpha_fj``.

Pieces, chosen by composition:

- storage (:class:`SharedPrefix`, default: one table of the largest candidate, candidate j reads the
  first d_j columns; or :class:`SeparateTables`: one table per candidate);
- transform to K (:class:`LinearBatchNorm`, default: Linear(d_j, K) + BatchNorm1d(K, affine=False) per
  candidate; or :class:`ZeroPad`);
- mixing (:class:`EqualMixing` during pre-training, :class:`GumbelSoftmaxMixing` during the search).

The transforms act on pooled embeddings (a prefix slice of a pooled bag is the pooled prefix), so the
tables stay in one pooled :class:`EmbeddingBagCollection`, sharded by DMP and trained by the fused
optimizer. Features with the same candidates form a group whose transforms, normalisation and mixing
run as one batched operation (per-feature parameters, per-channel statistics: the same maths as a loop
over features, without F small kernels per step), read as a view of the EBC output, and the mixture is
computed without the [B, G, J, K] candidates (:meth:`CandidateTransform.mix`: zero padding scales each
column once; Linear + BatchNorm folds the J normalised projections into one projection per feature).
The architecture weights are :meth:`arch_parameters`: trained on validation batches by
``recdim.search.autodim``, never by the training optimizer.
"""

from __future__ import annotations

import abc
import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.modules.linear_bn_mixture import linear_bn_mixture
from recdim.modules.provider import EmbeddingProvider

DEFAULT_CANDIDATES: Tuple[int, ...] = (4, 8, 16, 24, 32)

# Column range (start, width) of each candidate inside a feature's looked-up block.
Slices = List[Tuple[int, int]]
# (indices of G features, their alpha [G, J]) -> Gumbel noise [G, J]
NoiseFn = Callable[[Sequence[int], torch.Tensor], torch.Tensor]


def clip_candidates(candidates: Sequence[int], embedding_dim: int) -> Tuple[int, ...]:
    """Sorted distinct candidates no wider than K; all must be multiples of 4 (FBGEMM's TBE).

    Example::

        clip_candidates((4, 8, 16, 24, 32), 16)   # (4, 8, 16)
    """
    dims = tuple(sorted({int(d) for d in candidates if int(d) <= embedding_dim}))
    if not dims:
        raise ValueError(f"no candidate dimension in {tuple(candidates)} fits K = {embedding_dim}")
    if any(d <= 0 or d % 4 for d in dims):
        raise ValueError(f"candidate dimensions must be positive multiples of 4, got {dims}")
    return dims


class CandidateStorage(abc.ABC):
    """How a feature's candidate embeddings are stored in tables and read back after pooling."""

    @abc.abstractmethod
    def table_configs(
        self, feature: str, num_embeddings: int, dims: Sequence[int], pooling: PoolingType
    ) -> List[EmbeddingBagConfig]:
        """The tables of ``feature``."""

    @abc.abstractmethod
    def slices(self, dims: Sequence[int]) -> Slices:
        """``(start, width)`` of each candidate inside a feature's block (see :meth:`gather`)."""

    @abc.abstractmethod
    def keys(self, feature: str, dims: Sequence[int]) -> List[str]:
        """The keys of the EBC output whose concatenation is ``feature``'s block."""

    def block(self, pooled: Mapping[str, torch.Tensor], feature: str, dims: Sequence[int]) -> torch.Tensor:
        """The pooled block of one feature, [B, D_in], from the EBC output as a dict."""
        parts = [pooled[k] for k in self.keys(feature, dims)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def gather(self, pooled: KeyedTensor, features: Sequence[str], dims: Sequence[int]) -> torch.Tensor:
        """The blocks of G features with the same candidates, [B, G, D_in].

        A view of the EBC output when the blocks are adjacent and in order there (the usual case: EBC
        keys follow the table order), else a copy.
        """
        keys = [k for f in features for k in self.keys(f, dims)]
        index = {k: i for i, k in enumerate(pooled.keys())}
        first = index[keys[0]]
        values = pooled.values()
        if [index[k] for k in keys] == list(range(first, first + len(keys))):
            offsets = pooled.offset_per_key()
            start, stop = offsets[first], offsets[first + len(keys)]
            if stop - start < values.size(1):  # (a slice's backward writes into a zero tensor: skip it)
                values = values[:, start:stop]
            return values.view(values.size(0), len(features), (stop - start) // len(features))
        as_dict = pooled.to_dict()
        return torch.stack([self.block(as_dict, f, dims) for f in features], dim=1)


class SharedPrefix(CandidateStorage):
    """Weight sharing: one table ``t_<feature>`` of the largest candidate; candidate j reads columns
    ``[0, d_j)``."""

    def table_configs(
        self, feature: str, num_embeddings: int, dims: Sequence[int], pooling: PoolingType
    ) -> List[EmbeddingBagConfig]:
        return [
            EmbeddingBagConfig(
                name=f"t_{feature}",
                embedding_dim=max(dims),
                num_embeddings=num_embeddings,
                feature_names=[feature],
                pooling=pooling,
            )
        ]

    def slices(self, dims: Sequence[int]) -> Slices:
        return [(0, d) for d in dims]

    def keys(self, feature: str, dims: Sequence[int]) -> List[str]:
        return [feature]


class SeparateTables(CandidateStorage):
    """One table ``t_<feature>_d<d>`` per candidate; a feature's block is their concatenation."""

    def table_configs(
        self, feature: str, num_embeddings: int, dims: Sequence[int], pooling: PoolingType
    ) -> List[EmbeddingBagConfig]:
        return [
            EmbeddingBagConfig(
                name=f"t_{feature}_d{d}",
                embedding_dim=d,
                num_embeddings=num_embeddings,
                feature_names=[feature],
                pooling=pooling,
            )
            for d in dims
        ]

    def slices(self, dims: Sequence[int]) -> Slices:
        starts = [0]
        for d in dims[:-1]:
            starts.append(starts[-1] + d)
        return list(zip(starts, dims))

    def keys(self, feature: str, dims: Sequence[int]) -> List[str]:
        if len(dims) == 1:  # a feature in one table keeps its plain name
            return [feature]
        return [f"{feature}@t_{feature}_d{d}" for d in dims]


class CandidateTransform(nn.Module, abc.ABC):
    """Maps the candidate blocks of G features, [B, G, D_in], to one K-wide vector per candidate,
    [B, G, J, K]. Parameters are per feature and per candidate.

    :meth:`mix` gives the weighted sum over candidates, [B, G, K], which is what the provider needs;
    transforms override it to compute the sum without the [B, G, J, K] intermediate.
    """

    def mix(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``sum_j p[g, j] * self(x)[:, g, j]``: the mixture of the candidates of G features.

        Args:
            x: blocks [B, G, D_in].
            p: mixing weights [G, J].

        Returns:
            [B, G, K].
        """
        return (self(x) * p.unsqueeze(-1)).sum(dim=2)


class LinearBatchNorm(CandidateTransform):
    """Per feature and candidate: Linear(d_j, K) then BatchNorm1d(K, affine=False).

    :meth:`forward` gives every candidate (one batched matmul, one BatchNorm over the G * J * K
    channels). :meth:`mix` gives their weighted sum without normalising J * K channels per feature:
    BatchNorm of ``y_j = W_j x + b_j`` subtracts ``W_j x̄ + b_j`` and divides by
    ``s_j = sqrt(diag(W_j C W_jᵀ) + eps)`` (``x̄``, ``C``: the batch mean and covariance of the block;
    running statistics in eval), so

        ``sum_j p_j BN(y_j) = M (x - x̄)``,  ``M = sum_j diag(p_j / s_j) W_j``  [K, D_in]

    and the mixture is one [B, D_in] x [D_in, K] matmul per feature
    (:func:`~recdim.modules.linear_bn_mixture.linear_bn_mixture`). ``self.bn`` holds the running statistics
    and settings (momentum, eps, train/eval) either way; :meth:`mix` updates them as ``self.bn`` would.

    Under data parallelism each rank normalises with the statistics of its own part of the batch and
    keeps its own running statistics (the BatchNorm is not synchronised), as with any BatchNorm in DDP.

    Args:
        slices: ``(start, width)`` of each candidate in a feature's block.
        embedding_dim: K.
        num_features: G, features sharing these candidates.

    Example::

        t = LinearBatchNorm([(0, 4), (0, 8)], 16, num_features=3)
        t(torch.randn(32, 3, 8)).shape                                # [32, 3, 2, 16]
        t.mix(torch.randn(32, 3, 8), torch.full((3, 2), 0.5)).shape   # [32, 3, 16]
    """

    def __init__(self, slices: Slices, embedding_dim: int, num_features: int = 1) -> None:
        super().__init__()
        j, k, g = len(slices), embedding_dim, num_features
        width = max(a + w for a, w in slices)
        weight = torch.zeros(g, j * k, width)
        bias = torch.empty(g, j * k)
        mask = torch.zeros(j * k, width)
        for i, (a, w) in enumerate(slices):
            bound = 1.0 / math.sqrt(w)  # nn.Linear(d_j, K)'s default init
            nn.init.uniform_(weight[:, i * k : (i + 1) * k, a : a + w], -bound, bound)
            nn.init.uniform_(bias[:, i * k : (i + 1) * k], -bound, bound)
            mask[i * k : (i + 1) * k, a : a + w] = 1.0
        self.slices, self.num_candidates, self.embedding_dim = list(slices), j, k
        self.weight = nn.Parameter(weight)  # [G, J * K, D_in], zero outside each candidate's columns
        self.bias = nn.Parameter(bias)  # [G, J * K]
        self.register_buffer("mask", mask)
        self.bn = nn.BatchNorm1d(g * j * k, affine=False)

    def candidate_linear(self, feature: int, candidate: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Weight [K, d_j] and bias [K] of one feature's (position in the group) candidate."""
        k, (a, w) = self.embedding_dim, self.slices[candidate]
        rows = slice(candidate * k, (candidate + 1) * k)
        return self.weight[feature, rows, a : a + w], self.bias[feature, rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g = x.size(0), x.size(1)
        y = torch.baddbmm(
            self.bias.unsqueeze(1), x.transpose(0, 1), (self.weight * self.mask).transpose(1, 2)
        )  # [G, B, J*K]
        y = self.bn(y.transpose(0, 1).reshape(b, -1))
        return y.view(b, g, self.num_candidates, self.embedding_dim)

    def mix(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        bn, b = self.bn, x.size(0)
        batch_stats = bn.training or bn.running_mean is None  # as F.batch_norm decides
        if batch_stats and b < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got batch {b}")
        out, mean, var = linear_bn_mixture(
            x,
            self.weight,
            self.bias,
            p,
            self.mask,
            None if batch_stats else bn.running_mean,
            None if batch_stats else bn.running_var,
            bn.eps,
        )
        if bn.training and bn.running_mean is not None:
            self._update_running_stats(mean, var, b)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, batch: int) -> None:
        """``self.bn``'s training-mode update from the batch mean and biased variance of y, [G, J*K]."""
        bn = self.bn
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.lerp_(mean.view(-1), momentum)
        bn.running_var.lerp_(var.view(-1) * (batch / (batch - 1)), momentum)  # unbiased, as BatchNorm keeps


class ZeroPad(CandidateTransform):
    """Candidate j keeps its d_j values in the first d_j columns; the other K - d_j read 0.

    :meth:`mix` scales every column of the block once: column r of the block carries
    ``c_r = sum of p_j over the candidates whose slice holds r`` (with shared prefixes,
    ``c_r = sum_{j: d_j > r} p_j``), and the slices starting at the same column add up into the output,
    O(D_in) per feature instead of O(J * K).

    Args:
        slices: ``(start, width)`` of each candidate in a feature's block.
        embedding_dim: K.
        num_features: G (no parameters; any G works).
    """

    def __init__(self, slices: Slices, embedding_dim: int, num_features: int = 1) -> None:
        super().__init__()
        width = max(a + w for a, w in slices)
        index = torch.full((len(slices), embedding_dim), width, dtype=torch.long)  # ``width`` = a zero column
        cover = torch.zeros(len(slices), width)  # cover[j, r] = 1 where candidate j reads column r
        for i, (a, w) in enumerate(slices):
            index[i, :w] = torch.arange(a, a + w)
            cover[i, a : a + w] = 1.0
        # slices with the same start nest; each start contributes the widest of its slices to columns [0, w)
        spans: Dict[int, int] = {}
        for a, w in slices:
            spans[a] = max(spans.get(a, 0), w)
        self.spans: List[Tuple[int, int]] = sorted(spans.items())
        for (a0, w0), (a1, _) in zip(self.spans, self.spans[1:]):
            if a0 + w0 > a1:
                raise ValueError(f"candidate slices with different starts overlap: {slices}")
        self.num_candidates, self.embedding_dim = len(slices), embedding_dim
        self.register_buffer("index", index.flatten(), persistent=False)
        self.register_buffer("cover", cover, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (0, 1))
        return padded.index_select(2, self.index).view(x.size(0), x.size(1), self.num_candidates, self.embedding_dim)

    def mix(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        k = self.embedding_dim
        scaled = x * (p @ self.cover)  # [B, G, D_in]
        parts = [scaled[..., a : a + w] if w == k else F.pad(scaled[..., a : a + w], (0, k - w)) for a, w in self.spans]
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out


TransformFactory = Callable[[Slices, int, int], CandidateTransform]


class CandidateMixing(abc.ABC):
    """Turns the architecture weights of G features, alpha [G, J], into mixing weights p [G, J]."""

    @abc.abstractmethod
    def __call__(self, features: Sequence[int], alpha: torch.Tensor, training: bool) -> torch.Tensor: ...


class EqualMixing(CandidateMixing):
    """p = 1/J for every candidate (pre-training). Written as softmax(0 * alpha): alpha stays in the
    graph with an exactly zero gradient, so data-parallel wrappers see every parameter used."""

    def __call__(self, features: Sequence[int], alpha: torch.Tensor, training: bool) -> torch.Tensor:
        return torch.softmax(alpha * 0.0, dim=-1)


def gumbel_noise(features: Sequence[int], alpha: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel samples shaped like ``alpha``: -log(E), E ~ Exp(1)."""
    return torch.empty_like(alpha).exponential_().log_().neg_()


class GumbelSoftmaxMixing(CandidateMixing):
    """p = softmax((alpha + G) / tau) in training, softmax(alpha / tau) in eval; G drawn per feature
    and step.

    Args:
        tau: temperature (the search hook lowers it every step).
        noise: ``(feature indices, alpha) -> G``; standard Gumbel by default (tests pass fixed noise).
    """

    def __init__(self, tau: float = 1.0, noise: NoiseFn = gumbel_noise) -> None:
        self.tau = float(tau)
        self.noise = noise

    def __call__(self, features: Sequence[int], alpha: torch.Tensor, training: bool) -> torch.Tensor:
        logits = alpha + self.noise(features, alpha.detach()) if training else alpha
        return torch.softmax(logits / self.tau, dim=-1)


class CandidateDimsProvider(EmbeddingProvider):
    """AutoDim: per-feature candidate dimensions, transformed to K and mixed by architecture weights.

    Args:
        num_embeddings: rows per feature (``{feature: N}``), in output order.
        embedding_dim: K.
        candidates: candidate dimensions for every feature, or ``{feature: dims}``; clipped to <= K.
        storage: :class:`SharedPrefix` (default) or :class:`SeparateTables`.
        transform: builds the :class:`CandidateTransform` of a group of features from their slices, K
            and the group size (:class:`LinearBatchNorm` by default, or :class:`ZeroPad`).
        pooling: ``"sum"`` or ``"mean"``.
        is_weighted: features carry per-value weights.
        device: where tables are allocated (``meta`` to let DMP materialise them sharded).

    Call:
        features (KeyedJaggedTensor): keys ``feature_names``, batch size B.

    Returns:
        KeyedTensor: values [B, F * K], feature f = ``sum_j p_fj * T_fj(e_f[:, slice_j])``.

    Example::

        provider = CandidateDimsProvider({"user": 944, "item": 1683}, 16)      # candidates (4, 8, 16)
        provider.mixing = GumbelSoftmaxMixing(tau=1.0)
        kt = provider(kjt)
        provider.derive_dims()                                                 # {"user": 8, "item": 16}
    """

    def __init__(
        self,
        num_embeddings: Dict[str, int],
        embedding_dim: int,
        candidates: Union[Sequence[int], Mapping[str, Sequence[int]]] = DEFAULT_CANDIDATES,
        storage: Optional[CandidateStorage] = None,
        transform: TransformFactory = LinearBatchNorm,
        pooling: str = "sum",
        is_weighted: bool = False,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(list(num_embeddings), embedding_dim)
        pool = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}[pooling]
        self.storage = storage if storage is not None else SharedPrefix()
        per_feature = candidates if isinstance(candidates, Mapping) else {f: candidates for f in num_embeddings}
        self.dims: Dict[str, Tuple[int, ...]] = {
            f: clip_candidates(per_feature[f], embedding_dim) for f in num_embeddings
        }
        self.num_embeddings = {f: int(n) for f, n in num_embeddings.items()}
        self.tables: List[EmbeddingBagConfig] = []
        for f, n in self.num_embeddings.items():
            self.tables += self.storage.table_configs(f, n, self.dims[f], pool)
        self.ebc = EmbeddingBagCollection(tables=self.tables, is_weighted=is_weighted, device=device)
        # features with the same candidates share one batched transform
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for i, f in enumerate(self._feature_names):
            groups.setdefault(self.dims[f], []).append(i)
        self.groups: List[Tuple[Tuple[int, ...], List[int]]] = list(groups.items())
        self.transforms = nn.ModuleList(
            [transform(self.storage.slices(d), embedding_dim, len(m)) for d, m in self.groups]
        )
        order = [i for _, members in self.groups for i in members]
        self._order: Optional[List[int]] = (
            None if order == sorted(order) else [order.index(i) for i in range(len(order))]
        )
        self.alpha = nn.ParameterList([nn.Parameter(torch.zeros(len(self.dims[f]))) for f in num_embeddings])
        self.mixing: CandidateMixing = EqualMixing()

    def transform_of(self, feature: str) -> Tuple[CandidateTransform, int]:
        """The transform holding ``feature``'s parameters and the feature's position in its group."""
        i = self._feature_names.index(feature)
        for (_, members), transform in zip(self.groups, self.transforms):
            if i in members:
                return transform, members.index(i)
        raise KeyError(feature)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        pooled = self.ebc(features)
        outs: List[torch.Tensor] = []
        for (dims, members), transform in zip(self.groups, self.transforms):
            names = [self._feature_names[i] for i in members]
            block = self.table_output(self.storage.gather(pooled, names, dims))  # [B, G, D_in]
            p = self.mixing(members, torch.stack([self.alpha[i] for i in members]), self.training)  # [G, J]
            outs.append(transform.mix(block, p))  # [B, G, K]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if self._order is not None:
            out = out[:, self._order]
        return KeyedTensor(
            keys=self.feature_names,
            length_per_key=[self._embedding_dim] * out.size(1),
            values=out.reshape(out.size(0), -1),
        )

    def arch_parameters(self) -> List[nn.Parameter]:
        return list(self.alpha)

    @torch.no_grad()
    def candidate_weights(self) -> Dict[str, torch.Tensor]:
        """softmax(alpha_f) per feature (noise-free, temperature 1)."""
        return {f: torch.softmax(a.detach().float().cpu(), dim=-1) for f, a in zip(self._feature_names, self.alpha)}

    @torch.no_grad()
    def derive_dims(self) -> Dict[str, int]:
        """The searched dimension of each feature: its candidate with the largest weight."""
        return {f: self.dims[f][int(torch.argmax(a.detach()))] for f, a in zip(self._feature_names, self.alpha)}

    def embedding_params(self) -> int:
        return sum(t.num_embeddings * t.embedding_dim for t in self.tables)

    def embedding_bytes(self) -> int:
        return 4 * self.embedding_params()
