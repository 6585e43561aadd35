"""Feature schema of a prepared dataset: what each column is and how it becomes a feature.

A prepared dataset (see ``docs/data-format.md``) stores, per split, Parquet shards with one column per
field plus ``label``. Sparse fields are already mapped to contiguous ids ``0..num_embeddings-1``,
ordered by descending train frequency, with the out-of-vocabulary id last.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple


class FieldKind(enum.Enum):
    """How a field is stored and fed to the model.

    - ``CATEGORICAL``: one id per row (int64 column) -> one sparse feature with one value.
    - ``MULTI_CATEGORICAL``: a bag of ids per row (list<int64> column) -> a sparse feature, pooled.
    - ``DENSE``: a float32 column -> one column of the dense feature matrix.
    - ``WEIGHTED``: a float32 column -> a sparse feature with the single id 0 weighted by the value
      (a field embedding times its value, AutoSrh eq. 3; TorchRec's weighted features).
    """

    CATEGORICAL = "categorical"
    MULTI_CATEGORICAL = "multi_categorical"
    DENSE = "dense"
    WEIGHTED = "weighted"


class LabelKind(enum.Enum):
    """``BINARY``: click / like in {0, 1}, trained with BCE. ``RATING``: real value, trained with MSE."""

    BINARY = "binary"
    RATING = "rating"


SPARSE_KINDS = (FieldKind.CATEGORICAL, FieldKind.MULTI_CATEGORICAL, FieldKind.WEIGHTED)


@dataclass(frozen=True)
class FieldSpec:
    """One field of a prepared dataset.

    Args:
        name: column and feature name.
        kind: see :class:`FieldKind`.
        num_embeddings: number of ids (sparse kinds; includes the OOV id), 0 for dense fields.
        oov_id: id that unseen or rare values map to (sparse kinds), -1 when none.
    """

    name: str
    kind: FieldKind
    num_embeddings: int = 0
    oov_id: int = -1

    @property
    def is_sparse(self) -> bool:
        return self.kind in SPARSE_KINDS


@dataclass(frozen=True)
class Schema:
    """Ordered fields and the label kind of a prepared dataset.

    Example::

        schema = Schema(
            fields=(FieldSpec("user", FieldKind.CATEGORICAL, 944, 943),
                    FieldSpec("age", FieldKind.DENSE)),
            label=LabelKind.RATING,
        )
        schema.sparse_names  # ("user",)
    """

    fields: Tuple[FieldSpec, ...]
    label: LabelKind
    fields_by_name: Dict[str, FieldSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate field names {dup}")
        if "label" in names:
            raise ValueError("a field may not be called 'label'")
        object.__setattr__(self, "fields_by_name", {f.name: f for f in self.fields})

    @property
    def sparse_fields(self) -> Tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.is_sparse)

    @property
    def dense_fields(self) -> Tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.kind == FieldKind.DENSE)

    @property
    def sparse_names(self) -> Tuple[str, ...]:
        return tuple(f.name for f in self.sparse_fields)

    @property
    def dense_names(self) -> Tuple[str, ...]:
        return tuple(f.name for f in self.dense_fields)

    @property
    def is_weighted(self) -> bool:
        """True when any sparse feature carries per-value weights."""
        return any(f.kind == FieldKind.WEIGHTED for f in self.fields)

    def __getitem__(self, name: str) -> FieldSpec:
        try:
            return self.fields_by_name[name]
        except KeyError:
            raise KeyError(f"no field {name!r}; fields are {[f.name for f in self.fields]}") from None

    def select(self, names: Tuple[str, ...]) -> "Schema":
        """The schema restricted to ``names`` (in that order); dense fields are always kept."""
        if not names:
            return self
        keep = [self[n] for n in names]
        keep += [f for f in self.dense_fields if f.name not in names]
        return Schema(fields=tuple(keep), label=self.label)

    def to_json(self) -> Dict[str, Any]:
        return {
            "label": self.label.value,
            "fields": [
                {"name": f.name, "kind": f.kind.value, "num_embeddings": f.num_embeddings, "oov_id": f.oov_id}
                for f in self.fields
            ],
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> "Schema":
        fields: List[FieldSpec] = []
        for i, f in enumerate(data["fields"]):
            try:
                fields.append(
                    FieldSpec(
                        name=str(f["name"]),
                        kind=FieldKind(f["kind"]),
                        num_embeddings=int(f.get("num_embeddings", 0)),
                        oov_id=int(f.get("oov_id", -1)),
                    )
                )
            except (KeyError, ValueError) as e:
                raise ValueError(f"schema field #{i}: {e}") from e
        return Schema(fields=tuple(fields), label=LabelKind(data["label"]))
