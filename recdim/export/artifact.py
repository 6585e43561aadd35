"""The exported-model artifact: a directory of safetensors files and a ``manifest.json`` that names them.

Layout::

    <dir>/manifest.json                 format version, schema, arch config, tables, tiers, bytes, sha256s
    <dir>/arch.safetensors              the interaction arch's state dict
    <dir>/vocab/<field>.parquet         the dataset's vocabularies (when its prepare saved them, see
                                        :mod:`recdim.export.dataset_record`)
    <dir>/tables/<i>-<table>.safetensors     one table at the byte floor (recdim.layout.packed_table):
        rows.kept           [ceil(N / 8)] uint8      bitmap of the ids that keep anything (rank = kept row)
        lengths.packed      uint8, kept width - 1 per kept row in ceil(log2 K) bits, or as runs:
        or lengths.run_ends, lengths.run_values     (masks "prefix" and "sets")
        mask.ranks          uint8, each kept row's column set as its subset rank (mask "sets", K <= 64)
        or mask.bits        [ceil(R * K / 8)] uint8, one bit per (kept row, column) (mask "bits")
        values              [nnz] float32 / float16 / uint8 (int8 row-wise), jagged, kept rows in id order
        scale, bias         [R] float16 (int8 only: v = q * scale + bias)
        tier<j>.column_map  [d_j] int8 / int16, shared tiers only
        rows.tier           packed tier per kept row, only when rows are not placed by the default rule
    (the manifest's table entry: sizes, mask kind, values dtype, tiers, and bytes as stored beside the
    floor / CSR / uniform / training-layout costs; see recdim.export.table_files)

Loading rebuilds the tier tables the serving provider looks up (:mod:`recdim.export.packed_plan`).
Format v2 (this one) stores tables packed; v1 artifacts (padded tiers, dense remaps) are refused with a
message to re-export them.

Nothing is pickled: tensors load with ``safetensors`` and the manifest is JSON. Every tensor file is
written to a temporary name, fsynced and renamed; the manifest is written last the same way (and an old
manifest is removed first), then ``manifest.sha256``, its digest, so a crash mid-export never leaves a
directory that reads as complete. Reading checks the manifest against its digest, that every file it
names lies inside the artifact, and the size and sha256 of every file before parsing it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from recdim.config import ModelConfig
from recdim.config_io import from_dict, to_dict
from recdim.data.schema import FieldKind, Schema
from recdim.data.vocab_store import VocabError
from recdim.export.dataset_record import DatasetRecord
from recdim.export.table_files import BYTE_KEYS, decode_table, encode_table
from recdim.fsio import fsync_dir, write_atomic
from recdim.layout.tier_plan import TablePlan
from recdim.layout.value_codec import VALUE_DTYPES

FORMAT = "recdim-mixed-dim"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
ARCH_FILE = "arch.safetensors"


class ArtifactError(ValueError):
    """An artifact directory is incomplete, corrupt, edited or of an unknown format."""


@dataclass(frozen=True, eq=False)
class Artifact:
    """A verified, loaded artifact.

    Args:
        path: its directory.
        manifest: the parsed ``manifest.json``.
        schema: the feature schema.
        model: the arch config (K, arch, MLP sizes, pooling).
        features: sparse features in provider order (F).
        plans: one table plan per feature.
        tier_values: ``{table: [per tier [n_j, d_j] float32]}`` (decoded from the stored dtype).
        arch_state: the arch's state dict.
        dataset: the encoding of the dataset the model was trained on (vocabularies, fingerprint), or None
            for an artifact whose dataset saved none.
        values_dtype: how the table values are stored: ``"float32"``, ``"float16"`` or ``"int8"``.
    """

    path: Path
    manifest: Dict[str, Any]
    schema: Schema
    model: ModelConfig
    features: List[str]
    plans: List[TablePlan]
    tier_values: Dict[str, List[torch.Tensor]]
    arch_state: Dict[str, torch.Tensor]
    dataset: Optional[DatasetRecord] = None
    values_dtype: str = "float32"

    @property
    def multi_valued(self) -> List[str]:
        return [f for f in self.features if self.schema[f].kind == FieldKind.MULTI_CATEGORICAL]

    @property
    def is_weighted(self) -> bool:
        return any(self.schema[f].kind == FieldKind.WEIGHTED for f in self.features)


def _write_tensors(root: Path, rel: str, tensors: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    data = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    write_atomic(root / rel, data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _file_name(i: int, table: str) -> str:
    return f"tables/{i}-{re.sub(r'[^A-Za-z0-9_.-]', '_', table)}.safetensors"


def write_artifact(
    path: Union[str, Path],
    plans: Sequence[TablePlan],
    tier_values: Mapping[str, Sequence[torch.Tensor]],
    arch_state: Mapping[str, torch.Tensor],
    model: ModelConfig,
    schema: Schema,
    extra: Optional[Mapping[str, Any]] = None,
    dataset: Optional[DatasetRecord] = None,
    values_dtype: str = "float32",
) -> Dict[str, Any]:
    """Writes an artifact directory (tensor files first, the manifest last and atomically).

    Args:
        path: the directory (created; an existing artifact there is replaced, its manifest removed first).
        plans: one plan per sparse feature, in provider order.
        tier_values: ``{table: per tier [n_j, d_j]}``, stored packed (see the module docstring).
        arch_state: the arch's state dict.
        model: the arch config.
        schema: the feature schema (its sparse fields must include every plan's feature).
        extra: JSON-ready metadata stored under ``"extra"`` (metrics, run config, ...).
        dataset: the training dataset's encoding, stored so raw rows can be scored (None: ids only).
        values_dtype: the kept values as ``"float32"`` (exact), ``"float16"`` or ``"int8"`` (row-wise
            scale and bias; see :mod:`recdim.layout.value_codec` for the error bounds).

    Returns:
        The manifest written.

    Example::

        write_artifact("out/model", plans, provider.tier_weights(), model.arch.state_dict(), cfg.model, schema)
    """
    if values_dtype not in VALUE_DTYPES:
        raise ValueError(f"values_dtype {values_dtype!r}; expected one of {', '.join(VALUE_DTYPES)}")
    root = Path(path)
    (root / "tables").mkdir(parents=True, exist_ok=True)
    manifest_path = root / MANIFEST
    for old in (manifest_path, root / MANIFEST_DIGEST):
        old.unlink(missing_ok=True)
        fsync_dir(root)
    files: Dict[str, Any] = {ARCH_FILE: _write_tensors(root, ARCH_FILE, arch_state)}
    tables = []
    totals = {k: 0 for k in BYTE_KEYS}
    for i, plan in enumerate(plans):
        if plan.feature not in schema.sparse_names:
            raise ValueError(f"table {plan.name}: feature {plan.feature!r} is not a sparse field of the schema")
        if schema[plan.feature].num_embeddings != plan.num_embeddings:
            raise ValueError(
                f"table {plan.name}: {plan.num_embeddings} rows, the schema's {plan.feature!r} has "
                f"{schema[plan.feature].num_embeddings}"
            )
        tensors, entry = encode_table(plan, list(tier_values[plan.name]), values_dtype)
        rel = _file_name(i, plan.name)
        files[rel] = _write_tensors(root, rel, tensors)
        for k in totals:
            totals[k] += entry["bytes"][k]
        tables.append({"file": rel, **entry})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "schema": schema.to_json(),
        "model": to_dict(model),
        "features": [p.feature for p in plans],
        "num_dense": len(schema.dense_names),
        "values_dtype": values_dtype,
        "tables": tables,
        "bytes": totals,
        "files": files,
        "extra": dict(extra or {}),
    }
    if dataset is not None:
        for rel, data in dataset.files().items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(root / rel, data)
            files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        manifest["dataset"] = dataset.to_manifest()
    data = json.dumps(manifest, indent=2, sort_keys=False).encode()
    write_atomic(manifest_path, data)
    write_atomic(root / MANIFEST_DIGEST, hashlib.sha256(data).hexdigest() + "\n")
    fsync_dir(root)
    return manifest


def _read_verified(root: Path, rel: str, entry: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The tensors of file ``rel`` after checking it lies inside the artifact and its size and sha256
    against the manifest."""
    data = _verified_bytes(root, rel, entry)
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise ArtifactError(f"{root / rel}: not a readable safetensors file: {e}") from e


def _verified_bytes(root: Path, rel: str, entry: Mapping[str, Any]) -> bytes:
    """The bytes of file ``rel`` after checking it lies inside the artifact and its size and sha256."""
    path = root / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts or not path.resolve().is_relative_to(root.resolve()):
        raise ArtifactError(f"{root / MANIFEST}: file {rel!r} lies outside the artifact; refusing to read it")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (listed in {MANIFEST})")
    data = path.read_bytes()
    if len(data) != entry["size"]:
        raise ArtifactError(f"{path}: {len(data)} bytes, the manifest says {entry['size']} (truncated or replaced)")
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise ArtifactError(
            f"{path}: sha256 {digest} does not match the manifest's {entry['sha256']} (edited or corrupt)"
        )
    return data


def _read_dataset(root: Path, manifest: Mapping[str, Any], schema: Schema) -> Optional[DatasetRecord]:
    """The manifest's dataset record, every vocabulary file verified before it is parsed."""
    if "dataset" not in manifest:
        return None
    files = manifest["files"]

    def read(rel: str) -> bytes:
        if rel not in files:
            raise ArtifactError(f"{root / MANIFEST}: vocabulary {rel} has no checksum")
        return _verified_bytes(root, rel, files[rel])

    try:
        return DatasetRecord.from_manifest(manifest["dataset"], schema, read)
    except VocabError as e:
        raise ArtifactError(f"{root / MANIFEST}: {e}") from e


def _load_table(
    root: Path, entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], K: int
) -> Tuple[TablePlan, List[torch.Tensor], Dict[str, int]]:
    where = str(root / entry["file"])
    if int(entry["embedding_dim"]) != K:
        raise ArtifactError(f"{where}: embedding_dim {entry['embedding_dim']} != the model's {K}")
    try:
        return decode_table(entry, tensors)
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"{where}: {e}") from e


def read_artifact(path: Union[str, Path]) -> Artifact:
    """Reads and verifies an artifact directory (never unpickles anything).

    Raises:
        ArtifactError: no manifest (not an artifact, or an export that did not finish), unknown format,
            a file missing, truncated or edited (the error names the file), or tensors that do not match
            the manifest.

    Example::

        art = read_artifact("out/model")
        art.plans[0].bytes().total, art.model.arch
    """
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{root}: no {MANIFEST} (not an artifact, or its export did not finish)")
    digest_path = root / MANIFEST_DIGEST
    if not digest_path.is_file():
        raise ArtifactError(f"{root}: no {MANIFEST_DIGEST} (an export that did not finish, or an edited artifact)")
    try:
        raw = manifest_path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != digest_path.read_text().strip():
            raise ArtifactError(f"{manifest_path}: does not match {MANIFEST_DIGEST} (edited or corrupt)")
        manifest = json.loads(raw)
    except (OSError, ValueError) as e:
        if isinstance(e, ArtifactError):
            raise
        raise ArtifactError(f"{manifest_path}: unreadable manifest: {e}") from e
    if manifest.get("format") == FORMAT and manifest.get("format_version") == 1:
        raise ArtifactError(
            f"{manifest_path}: format v1 (padded tier tables), this reader knows v{FORMAT_VERSION} (packed tables); "
            "re-export the model (recdim export --from RUN)"
        )
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path}: format {manifest.get('format')!r} v{manifest.get('format_version')}, "
            f"this reader knows {FORMAT!r} v{FORMAT_VERSION}"
        )
    try:
        try:
            schema = Schema.from_json(manifest["schema"])
        except ValueError as e:
            raise ArtifactError(f"{manifest_path}: schema: {e}") from e
        model = from_dict(ModelConfig, manifest["model"], source=str(manifest_path), prefix="model")
        files = manifest["files"]
        arch_state = _read_verified(root, ARCH_FILE, files[ARCH_FILE])
        values_dtype = manifest["values_dtype"]
        plans: List[TablePlan] = []
        tier_values: Dict[str, List[torch.Tensor]] = {}
        totals = {k: 0 for k in BYTE_KEYS}
        for entry in manifest["tables"]:
            if entry["file"] not in files:
                raise ArtifactError(f"{manifest_path}: table {entry['name']} file {entry['file']} has no checksum")
            if entry["values_dtype"] != values_dtype:
                raise ArtifactError(
                    f"{manifest_path}: table {entry['name']} values_dtype {entry['values_dtype']!r} != the "
                    f"artifact's {values_dtype!r}"
                )
            tensors = _read_verified(root, entry["file"], files[entry["file"]])
            plan, values, got = _load_table(root, entry, tensors, model.embedding_dim)
            plans.append(plan)
            tier_values[plan.name] = values
            for k in totals:
                totals[k] += got[k]
        if manifest["bytes"] != totals:
            raise ArtifactError(f"{manifest_path}: bytes {manifest['bytes']} are not the tables' sum {totals}")
    except KeyError as e:
        raise ArtifactError(f"{manifest_path}: missing key {e}") from e
    features = [str(f) for f in manifest["features"]]
    if features != [p.feature for p in plans]:
        raise ArtifactError(f"{manifest_path}: features {features} do not match the tables' features")
    for plan in plans:
        if plan.feature not in schema.sparse_names or schema[plan.feature].num_embeddings != plan.num_embeddings:
            raise ArtifactError(
                f"{manifest_path}: table {plan.name} ({plan.num_embeddings} rows) does not match a sparse field "
                f"{plan.feature!r} of that size in the schema"
            )
    try:
        dataset = _read_dataset(root, manifest, schema)
    except KeyError as e:
        raise ArtifactError(f"{manifest_path}: dataset record: missing key {e}") from e
    return Artifact(root, manifest, schema, model, features, plans, tier_values, arch_state, dataset, values_dtype)
