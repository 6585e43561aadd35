"""A TorchRec-standard export of the tier tables, beside recdim's own artifact (``recdim export --torchrec DIR``).

A serving stack built on TorchRec loads the tier tables with TorchRec's own modules, no recdim code needed
to hold or look up the tables. The directory::

    <dir>/torchrec.json            format, K, pooling, the tables as EmbeddingBagConfig fields (name,
                                   num_embeddings, embedding_dim, feature_names, pooling, data_type),
                                   per feature its tier tables in order, a size + sha256 per file
    <dir>/torchrec.sha256          the digest of torchrec.json
    <dir>/state_dict.safetensors   exactly ``torchrec.quant.embedding_modules.EmbeddingBagCollection(configs,
                                   quant_state_dict_split_scale_bias=True).state_dict()``:
                                   ``embedding_bags.<table>.weight`` uint8 [n, d * bytes] (FP32 / FP16 rows as
                                   little-endian bytes, INT8 codes), and for INT8 ``weight_qscale`` /
                                   ``weight_qbias`` float16 [n, 1] (TorchRec / FBGEMM row-wise quantization)
    <dir>/remap.safetensors        ``<feature>`` int32 [N, 2]: original id -> (tier, row in that tier), -1 = dropped
    <dir>/column_maps.safetensors  ``<table>`` int8 / int16 [d] (shared) or [n, d] (per row): the K-wide column
                                   each slot fills, -1 = padding

One table per feature x tier (``<table>__tier<j>`` reading KJT key ``<feature>@@tier<j>``), each with its
own ``embedding_dim`` (a multiple of 4) and ``data_type`` (FP32, FP16 or INT8). Nothing is pickled.

To serve an id: remap it to (tier, row), look the row up in that tier's table, write slot s to column
``column_map[s]`` of the K-wide vector (skip -1), then pool over the bag. A tier with a shared map may pool
first and scatter once per bag; a tier with per-row maps must scatter per id (one id per EBC bag).
:meth:`TorchRecTables.embeddings` does exactly this on any EBC holding the tables.

Example::

    export_torchrec("models/cr-4", "models/cr-4-torchrec")          # from a recdim artifact
    tables = read_torchrec_export("models/cr-4-torchrec")
    ebc = tables.quantized_ebc()                                    # torchrec.quant EmbeddingBagCollection
    kt = tables.embeddings(ebc, kjt)                                # [B, F * K], as recdim serves them
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType, QuantConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection
from torchrec.quant.embedding_modules import quant_prep_enable_quant_state_dict_split_scale_bias
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recdim.fsio import fsync_dir, write_atomic
from recdim.layout.tier_plan import PAD, TablePlan

FORMAT = "recdim-torchrec"
FORMAT_VERSION = 1
MANIFEST = "torchrec.json"
MANIFEST_DIGEST = "torchrec.sha256"
STATE_FILE = "state_dict.safetensors"
REMAP_FILE = "remap.safetensors"
MAPS_FILE = "column_maps.safetensors"
DATA_TYPES = {"float32": DataType.FP32, "float16": DataType.FP16, "int8": DataType.INT8}
_TORCH_DTYPE = {DataType.FP32: torch.float32, DataType.FP16: torch.float16, DataType.INT8: torch.qint8}
_ROW_BYTES = {DataType.FP32: 4, DataType.FP16: 2, DataType.INT8: 1}


class TorchRecExportError(ValueError):
    """A TorchRec export directory is incomplete, corrupt, edited or of an unknown format."""


@dataclass(frozen=True, eq=False)
class TorchRecTables:
    """Tier tables in TorchRec's terms (see the module docstring).

    Args:
        embedding_dim: K.
        pooling: ``"sum"`` or ``"mean"`` (over the original bag, dropped ids included).
        is_weighted: features carry per-value weights.
        features: the features, in output order (F).
        configs: one EmbeddingBagConfig per feature x tier.
        tables_of: ``{feature: its tier table names, in tier order}``.
        state_dict: the quantized EBC's state dict (split scale / bias).
        remaps: ``{feature: [N, 2] int32 (tier, row)}``, -1 for dropped ids.
        column_maps: ``{table: [d] or [n, d]}``.
    """

    embedding_dim: int
    pooling: str
    is_weighted: bool
    features: List[str]
    configs: List[EmbeddingBagConfig]
    tables_of: Dict[str, List[str]]
    state_dict: Dict[str, torch.Tensor]
    remaps: Dict[str, torch.Tensor]
    column_maps: Dict[str, torch.Tensor]

    def quantized_ebc(self) -> QuantEmbeddingBagCollection:
        """A CPU ``torchrec.quant.embedding_modules.EmbeddingBagCollection`` holding the tables, loaded
        through its own ``load_state_dict`` (strict)."""
        ebc = QuantEmbeddingBagCollection(
            [_copy(c) for c in self.configs],
            is_weighted=self.is_weighted,
            device=torch.device("cpu"),
            quant_state_dict_split_scale_bias=True,
        )
        ebc.load_state_dict(self.state_dict, strict=True)
        return ebc

    @torch.no_grad()
    def embeddings(self, ebc: torch.nn.Module, features: KeyedJaggedTensor) -> KeyedTensor:
        """Reference serving lookup on an EBC holding the tier tables: every kept id is its own bag in its
        tier's key, its row is scattered by its column map into K columns, and the K-wide vectors are
        pooled over the original bags.

        Args:
            ebc: an EmbeddingBagCollection (float or quantized) with the tables of :attr:`configs`.
            features: KJT of original ids, keys including :attr:`features`, batch size B.

        Returns:
            KeyedTensor: values [B, F * K] (dropped ids and pruned columns read as zero).
        """
        K, F, B = self.embedding_dim, len(self.features), features.stride()
        jt = features.to_dict()
        keys = [c.feature_names[0] for c in self.configs]
        key_index = {k: i for i, k in enumerate(keys)}
        table_index = {c.name: i for i, c in enumerate(self.configs)}
        pos_key, pos_row, pos_bag, pos_w = [], [], [], []
        for f, name in enumerate(self.features):
            j = jt[name]
            ids = j.values().to(torch.int64)
            bag = torch.repeat_interleave(torch.arange(B), j.lengths().to(torch.int64), output_size=ids.numel())
            rm = self.remaps[name].to(torch.int64).index_select(0, ids)
            kept = rm[:, 0] >= 0
            tiers = torch.tensor(
                [key_index[self.configs[table_index[t]].feature_names[0]] for t in self.tables_of[name]] or [0],
                dtype=torch.int64,
            )
            pos_key.append(tiers.index_select(0, rm[kept, 0]))
            pos_row.append(rm[kept, 1])
            pos_bag.append(f * B + bag[kept])
            if self.is_weighted:
                pos_w.append(j.weights()[kept].float())
        key, row, seg = torch.cat(pos_key), torch.cat(pos_row), torch.cat(pos_bag)
        weights = torch.cat(pos_w) if pos_w else None
        L = key.numel()
        order = torch.argsort(key, stable=True)  # ids grouped by key: bag i of its key is id i
        lengths = torch.zeros(len(keys), max(L, 1), dtype=torch.int32)
        lengths[key, torch.arange(L)] = 1
        kjt = KeyedJaggedTensor(
            keys=keys,
            values=row.index_select(0, order),
            lengths=lengths.reshape(-1),
            weights=torch.ones(L) if self.is_weighted else None,
            stride=max(L, 1),
        )
        out = ebc(kjt).to_dict() if L else {}
        pooled = torch.zeros(F * B, K + 1)
        for c in self.configs:
            k = key_index[c.feature_names[0]]
            mine = torch.nonzero(key == k).squeeze(1)
            if mine.numel() == 0:
                continue
            vec = out[c.feature_names[0]].float().index_select(0, mine)  # [n, d]
            if weights is not None:
                vec = vec * weights.index_select(0, mine).unsqueeze(1)
            cmap = self.column_maps[c.name].to(torch.int64)
            maps = cmap.expand(mine.numel(), -1) if cmap.dim() == 1 else cmap.index_select(0, row.index_select(0, mine))
            spread = torch.zeros(mine.numel(), K + 1).scatter_(1, torch.where(maps >= 0, maps, K), vec)
            pooled.index_add_(0, seg.index_select(0, mine), spread)
        values = pooled[:, :K].view(F, B, K)
        if self.pooling == "mean":
            lens = torch.stack([jt[n].lengths() for n in self.features]).clamp(min=1).unsqueeze(-1)
            values = values / lens.to(values.dtype)
        return KeyedTensor(keys=self.features, length_per_key=[K] * F, values=values.transpose(0, 1).reshape(B, F * K))


def _copy(c: EmbeddingBagConfig) -> EmbeddingBagConfig:
    return EmbeddingBagConfig(
        name=c.name,
        embedding_dim=c.embedding_dim,
        num_embeddings=c.num_embeddings,
        feature_names=list(c.feature_names),
        pooling=c.pooling,
        data_type=c.data_type,
    )


def torchrec_tables(
    plans: Sequence[TablePlan],
    tier_values: Mapping[str, Sequence[torch.Tensor]],
    pooling: str = "sum",
    is_weighted: bool = False,
    data_type: str = "float32",
) -> TorchRecTables:
    """The tier tables of ``plans`` in TorchRec's terms, quantized by TorchRec itself
    (``QuantEmbeddingBagCollection.from_float``).

    Args:
        plans: one plan per feature, in output order.
        tier_values: ``{table: per tier [n_j, d_j]}``.
        pooling: ``"sum"`` or ``"mean"``.
        is_weighted: features carry per-value weights.
        data_type: ``"float32"``, ``"float16"`` or ``"int8"`` (row-wise, TorchRec's INT8).

    Returns:
        TorchRecTables: configs, state dict, remaps and column maps.
    """
    if data_type not in DATA_TYPES:
        raise ValueError(f"data_type {data_type!r}; expected one of {', '.join(DATA_TYPES)}")
    dt = DATA_TYPES[data_type]
    configs = [cfg for p in plans for cfg in p.tier_configs()]
    remaps, maps, tables_of = {}, {}, {}
    for p in plans:
        g = p.global_rows()
        offsets = torch.tensor(p.tier_offsets, dtype=torch.int64)
        tier = torch.searchsorted(offsets, g.clamp(min=0), right=True) - 1
        row = g - offsets.index_select(0, tier.clamp(min=0))
        remaps[p.feature] = torch.stack([torch.where(g >= 0, tier, PAD), torch.where(g >= 0, row, PAD)], 1).to(
            torch.int32
        )
        tables_of[p.feature] = [t.name for t in p.tiers]
        for t in p.tiers:
            maps[t.name] = t.column_map.clone()
    state: Dict[str, torch.Tensor] = {}
    if configs:
        float_ebc = EmbeddingBagCollection(tables=configs, is_weighted=is_weighted, device=torch.device("cpu"))
        with torch.no_grad():
            for p in plans:
                for t, v in zip(p.tiers, tier_values[p.name]):
                    float_ebc.embedding_bags[t.name].weight.copy_(v.detach().float())
        float_ebc.qconfig = QuantConfig(
            activation=torch.quantization.PlaceholderObserver.with_args(dtype=torch.float),
            weight=torch.quantization.PlaceholderObserver.with_args(dtype=_TORCH_DTYPE[dt]),
        )
        quant_prep_enable_quant_state_dict_split_scale_bias(float_ebc)
        q = QuantEmbeddingBagCollection.from_float(float_ebc)
        state = {k: v.detach().clone().contiguous() for k, v in q.state_dict().items()}
        configs = [_copy(c) for c in q.embedding_bag_configs()]
    return TorchRecTables(
        plans[0].embedding_dim if plans else 0,
        pooling,
        is_weighted,
        [p.feature for p in plans],
        configs,
        tables_of,
        state,
        remaps,
        maps,
    )


def _config_json(c: EmbeddingBagConfig) -> Dict[str, Any]:
    return {
        "name": c.name,
        "num_embeddings": c.num_embeddings,
        "embedding_dim": c.embedding_dim,
        "feature_names": list(c.feature_names),
        "pooling": c.pooling.name,
        "data_type": c.data_type.name,
    }


def write_torchrec_export(path: Union[str, Path], tables: TorchRecTables) -> Dict[str, Any]:
    """Writes ``tables`` to directory ``path`` (files first, the manifest and its digest last, atomically).

    Returns:
        The manifest written.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    for old in (root / MANIFEST, root / MANIFEST_DIGEST):
        old.unlink(missing_ok=True)
    fsync_dir(root)
    files = {}
    for rel, tensors in ((STATE_FILE, tables.state_dict), (REMAP_FILE, tables.remaps), (MAPS_FILE, tables.column_maps)):
        data = st_save({k: v.contiguous() for k, v in tensors.items()})
        write_atomic(root / rel, data)
        files[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "embedding_dim": tables.embedding_dim,
        "pooling": tables.pooling,
        "is_weighted": tables.is_weighted,
        "features": [
            {"name": f, "num_embeddings": int(tables.remaps[f].size(0)), "tables": tables.tables_of[f]}
            for f in tables.features
        ],
        "tables": [_config_json(c) for c in tables.configs],
        "files": files,
    }
    data = json.dumps(manifest, indent=2).encode()
    write_atomic(root / MANIFEST, data)
    write_atomic(root / MANIFEST_DIGEST, hashlib.sha256(data).hexdigest() + "\n")
    fsync_dir(root)
    return manifest


def _read(root: Path, rel: str, files: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    path = root / rel
    if rel not in files:
        raise TorchRecExportError(f"{root / MANIFEST}: no checksum for {rel}")
    if not path.resolve().is_relative_to(root.resolve()) or not path.is_file():
        raise TorchRecExportError(f"{path}: missing or outside the export")
    data = path.read_bytes()
    entry = files[rel]
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise TorchRecExportError(f"{path}: size or sha256 does not match {MANIFEST} (truncated or edited)")
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise TorchRecExportError(f"{path}: not a readable safetensors file: {e}") from e


def _expected_state(c: EmbeddingBagConfig) -> Dict[str, Any]:
    n, d = c.num_embeddings, c.embedding_dim
    out = {f"embedding_bags.{c.name}.weight": (torch.uint8, [n, d * _ROW_BYTES[c.data_type]])}
    if c.data_type == DataType.INT8:
        out[f"embedding_bags.{c.name}.weight_qscale"] = (torch.float16, [n, 1])
        out[f"embedding_bags.{c.name}.weight_qbias"] = (torch.float16, [n, 1])
    return out


def read_torchrec_export(path: Union[str, Path]) -> TorchRecTables:
    """Reads and verifies a TorchRec export (never unpickles).

    Raises:
        TorchRecExportError: no or edited manifest, unknown format, a file missing or edited, or tensors that
            do not fit the configs (the message names the file).
    """
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file() or not (root / MANIFEST_DIGEST).is_file():
        raise TorchRecExportError(f"{root}: no {MANIFEST} / {MANIFEST_DIGEST} (not a TorchRec export, or unfinished)")
    raw = mpath.read_bytes()
    if hashlib.sha256(raw).hexdigest() != (root / MANIFEST_DIGEST).read_text().strip():
        raise TorchRecExportError(f"{mpath}: does not match {MANIFEST_DIGEST} (edited or corrupt)")
    m = json.loads(raw)
    if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
        raise TorchRecExportError(
            f"{mpath}: format {m.get('format')!r} v{m.get('format_version')}, expected {FORMAT!r} v{FORMAT_VERSION}"
        )
    try:
        K = int(m["embedding_dim"])
        configs = [
            EmbeddingBagConfig(
                name=c["name"],
                embedding_dim=int(c["embedding_dim"]),
                num_embeddings=int(c["num_embeddings"]),
                feature_names=list(c["feature_names"]),
                pooling=PoolingType[c["pooling"]],
                data_type=DataType[c["data_type"]],
            )
            for c in m["tables"]
        ]
        state = _read(root, STATE_FILE, m["files"])
        remaps = _read(root, REMAP_FILE, m["files"])
        maps = _read(root, MAPS_FILE, m["files"])
        by_name = {c.name: c for c in configs}
        expect: Dict[str, Any] = {}
        for c in configs:
            if c.data_type not in _ROW_BYTES:
                raise TorchRecExportError(f"{mpath}: table {c.name}: data_type {c.data_type.name} is not exported")
            expect.update(_expected_state(c))
        for name, (dtype, shape) in expect.items():
            if name not in state or state[name].dtype != dtype or list(state[name].shape) != shape:
                raise TorchRecExportError(f"{root / STATE_FILE}: {name} missing or not {dtype}{shape}")
        if set(state) != set(expect):
            raise TorchRecExportError(f"{root / STATE_FILE}: unexpected tensors {sorted(set(state) - set(expect))}")
        features = [f["name"] for f in m["features"]]
        tables_of = {f["name"]: list(f["tables"]) for f in m["features"]}
        for f in m["features"]:
            r = remaps.get(f["name"])
            n = int(f["num_embeddings"])
            if r is None or r.dtype != torch.int32 or list(r.shape) != [n, 2]:
                raise TorchRecExportError(f"{root / REMAP_FILE}: {f['name']} missing or not int32[{n}, 2]")
            rows = torch.tensor([by_name[t].num_embeddings for t in f["tables"]] or [0], dtype=torch.int64)
            tier, row = r[:, 0].to(torch.int64), r[:, 1].to(torch.int64)
            bad = (tier < -1) | (tier >= len(f["tables"])) | ((tier < 0) != (row < 0))
            bad |= (tier >= 0) & (row >= rows.index_select(0, tier.clamp(min=0)))
            if bool(bad.any()):
                raise TorchRecExportError(f"{root / REMAP_FILE}: {f['name']} points outside its tier tables")
        for c in configs:
            cm = maps.get(c.name)
            if cm is None or cm.shape[-1] != c.embedding_dim or (cm.dim() == 2 and cm.shape[0] != c.num_embeddings):
                raise TorchRecExportError(f"{root / MAPS_FILE}: {c.name} missing or not [d] / [n, d]")
            if bool(((cm < -1) | (cm >= K)).any()):
                raise TorchRecExportError(f"{root / MAPS_FILE}: {c.name} has columns outside [-1, {K})")
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, TorchRecExportError):
            raise
        raise TorchRecExportError(f"{mpath}: {type(e).__name__}: {e}") from e
    return TorchRecTables(
        K, str(m["pooling"]), bool(m["is_weighted"]), features, configs, tables_of, state, remaps, maps
    )


def export_torchrec(
    artifact: Union[str, Path], out: Union[str, Path], data_type: Optional[str] = None
) -> Dict[str, Any]:
    """Writes the TorchRec export of a recdim artifact.

    Args:
        artifact: a recdim artifact directory (verified on read).
        out: the export directory.
        data_type: ``"float32"``, ``"float16"`` or ``"int8"``; default: the artifact's values dtype.

    Returns:
        The export's manifest.

    Example::

        export_torchrec("models/cr-4", "models/cr-4-torchrec", "int8")
    """
    from recdim.export.artifact import read_artifact

    art = read_artifact(artifact)
    tables = torchrec_tables(
        art.plans, art.tier_values, art.model.pooling, art.is_weighted, data_type or art.values_dtype
    )
    return write_torchrec_export(out, tables)
