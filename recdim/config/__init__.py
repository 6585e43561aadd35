"""Typed configs for every recdim command. One TOML file can hold all sections of an experiment.

Unknown keys are errors (see :mod:`recdim.config_io`); command-line ``--set a.b=v`` overrides apply
before validation.

Example::

    cfg = load_config(Config, "configs/ml100k_rating.toml", ["train.epochs=2"])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Literal, Optional, Tuple

from recdim.config.arches import (  # noqa: F401  (re-exported)
    ARCHES,
    LINEAR_SOURCES,
    LINEAR_TABLE_ARCHES,
    Arch,
    LinearSource,
    PNNProduct,
)
from recdim.config.autodim import AutoDimConfig
from recdim.config.baseline import BaselineConfig
from recdim.config.compare import CompareConfig
from recdim.config.dnis import DNISConfig
from recdim.config.methods import entry
from recdim.config.pep import PEPConfig
from recdim.config.ranking import RankingConfig
from recdim.config.search_split import SearchSplitConfig
from recdim.config_io import ConfigError, load_config  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class TabularFieldConfig:
    """One column of a generic CSV/Parquet input.

    Args:
        name: column name in the file.
        kind: ``categorical``, ``multi_categorical`` (values joined by ``separator``) or ``numerical``.
        separator: separator inside a multi-categorical cell.
    """

    name: str
    kind: Literal["categorical", "multi_categorical", "numerical"]
    separator: str = "|"


@dataclass(frozen=True)
class TabularConfig:
    """Schema of a generic CSV or Parquet input (``prepare.source = "tabular"``).

    Args:
        fields: the feature columns.
        label: label column.
        label_kind: ``binary`` or ``rating``.
        time_column: optional column used by ``split_by = "time"``.
        delimiter: CSV delimiter.
        label_map: label text -> label value, for string labels (e.g. ``{"<=50K" = 0, ">50K" = 1}``);
            cells are compared with surrounding whitespace removed, and a label not in the map is a
            malformed row. Empty: the label column holds numbers.
        time_format: how ``time_column`` is read: ``number`` (e.g. unix seconds), ``iso8601`` (ISO 8601
            dates / timestamps such as ``2012-03-01T10:00:00Z``, converted to seconds since 1970 UTC; no
            offset means UTC) or ``auto`` (a cell that is a number is taken as one, anything else must be
            ISO 8601; so a bare year ``2012`` is a number unless ``iso8601`` is set).

    Example::

        [prepare.tabular]
        label = "income"
        label_map = {"<=50K" = 0, ">50K" = 1}
        time_column = "signup"
        time_format = "iso8601"
    """

    fields: Tuple[TabularFieldConfig, ...] = ()
    label: str = "label"
    label_kind: Literal["binary", "rating"] = "binary"
    time_column: str = ""
    delimiter: str = ","
    label_map: Dict[str, float] = field(default_factory=dict)
    time_format: Literal["auto", "number", "iso8601"] = "auto"

    def __post_init__(self) -> None:
        keys = [k.strip() for k in self.label_map]
        if "" in keys or len(set(keys)) != len(keys):
            raise ValueError(f"tabular.label_map: keys must be distinct non-empty labels, got {list(self.label_map)}")
        values = [float(v) for v in self.label_map.values()]
        if any(v != v or v in (float("inf"), float("-inf")) for v in values):
            raise ValueError(f"tabular.label_map: values must be finite numbers, got {self.label_map}")
        if self.label_kind == "binary" and any(v not in (0.0, 1.0) for v in values):
            raise ValueError(f"tabular.label_map: binary labels map to 0 or 1, got {self.label_map}")


@dataclass(frozen=True)
class MovieLensConfig:
    """Which MovieLens layout a directory holds (``prepare.source = "movielens"``).

    Args:
        variant: ``auto`` (detected from the files: ``u.data`` -> ``ml-100k``; ``ratings.dat`` with
            ``users.dat`` -> ``ml-1m``, without -> ``ml-10m``; ``ratings.csv`` -> ``ml-20m``, also the
            ml-25m / ml-latest layout), or one of those names.
    """

    variant: Literal["auto", "ml-100k", "ml-1m", "ml-10m", "ml-20m"] = "auto"


@dataclass(frozen=True)
class AmazonConfig:
    """Layout of an Amazon review ratings CSV (``prepare.source = "amazon"``).

    Args:
        order: the column order of the headerless file: ``user,item,rating,timestamp`` (the 2014
            release's ``ratings_*.csv``) or ``item,user,rating,timestamp`` (the 2018 release).
    """

    order: Literal["user,item,rating,timestamp", "item,user,rating,timestamp"] = "user,item,rating,timestamp"


@dataclass(frozen=True)
class SyntheticConfig:
    """Criteo-shaped synthetic data with a planted teacher (``prepare.source = "synthetic"``).

    Each field f has a strength ``s_f`` (0 = noise) and a true embedding rank ``r_f``; labels are drawn
    from a teacher built on those, so a good dimension search gives more dimensions to strong,
    high-rank fields.

    Args:
        rows: number of rows generated.
        num_dense: number of numerical (dense) columns.
        cardinalities: vocabulary size per categorical field.
        strengths: predictive strength per field (same length as ``cardinalities``), 0 for noise.
        ranks: true embedding rank per field (same length).
        zipf: Zipf exponent of id popularity.
        teacher_dim: width of the teacher's interaction space.
        seed: generator seed; the same seed gives the same rows.
    """

    rows: int = 200_000
    num_dense: int = 4
    cardinalities: Tuple[int, ...] = (2000, 2000, 1000, 1000, 500, 500, 200, 200)
    strengths: Tuple[float, ...] = (1.0, 1.0, 0.7, 0.7, 0.4, 0.0, 0.0, 0.0)
    ranks: Tuple[int, ...] = (8, 8, 4, 4, 2, 2, 2, 2)
    zipf: float = 1.1
    teacher_dim: int = 8
    seed: int = 0


@dataclass(frozen=True)
class PrepareConfig:
    """``recdim prepare``: raw files -> Parquet shards + stats.

    Args:
        source: reader to use.
        input: raw file or directory (unused for ``synthetic``).
        output: output directory of the prepared dataset.
        task: for MovieLens and Amazon ratings, ``rating`` (regression) or ``ctr`` (rating >= 4 positive,
            <= 2 negative, 3 dropped).
        min_count: categorical values seen fewer times in the train split map to the field's OOV id.
        split: train / val / test fractions.
        split_by: ``random`` (seeded) or ``time`` (where the data has a timestamp).
        numerical: how numerical fields become features: ``bucketize`` (v > 2 -> floor(ln(v)^2), a
            categorical id), ``dense`` (dense feature), ``weighted`` (field embedding times value).
        numerical_fields: per-field overrides of ``numerical`` (``{"I1" = "weighted", "I2" = "bucketize"}``);
            fields not named take ``numerical``. A name that is not a numerical field of the source is an
            error naming it.
        seed: split seed.
        chunk_rows: rows read per chunk (bounds memory).
        rows_per_shard: rows per Parquet shard.
        max_bad_rows: malformed rows to skip and count; 0 means the first one is an error.
        tabular: schema of a generic CSV / Parquet input.
        synthetic: synthetic generator settings.
        movielens: the MovieLens layout (detected by default).
        amazon: the column order of an Amazon ratings CSV.
    """

    source: Literal["movielens", "criteo", "avazu", "kdd12", "amazon", "tabular", "synthetic"] = "synthetic"
    input: str = ""
    output: str = "data/prepared"
    task: Literal["rating", "ctr"] = "rating"
    min_count: int = 10
    split: Tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_by: Literal["random", "time"] = "random"
    numerical: Literal["bucketize", "dense", "weighted"] = "bucketize"
    numerical_fields: Dict[str, Literal["bucketize", "dense", "weighted"]] = field(default_factory=dict)
    seed: int = 0
    chunk_rows: int = 100_000
    rows_per_shard: int = 1_000_000
    max_bad_rows: int = 0
    tabular: TabularConfig = field(default_factory=TabularConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    movielens: MovieLensConfig = field(default_factory=MovieLensConfig)
    amazon: AmazonConfig = field(default_factory=AmazonConfig)

    def __post_init__(self) -> None:
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0:
            raise ValueError(f"split must be three non-negative fractions summing to 1, got {self.split}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        modes = ("bucketize", "dense", "weighted")
        bad = {f: m for f, m in self.numerical_fields.items() if m not in modes}
        if bad:
            raise ValueError(f"prepare.numerical_fields: modes must be one of {list(modes)}, got {bad}")


@dataclass(frozen=True)
class DataConfig:
    """Which prepared dataset to train on.

    Args:
        path: prepared dataset directory; empty means ``prepare.output``.
        features: sparse fields fed to the model (in order); empty means all.
    """

    path: str = ""
    features: Tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    """The interaction arch and the embedding width K shared by all features.

    Args:
        arch: one of ``dlrm``, ``deepfm``, ``fm``, ``wide_deep``, ``mf``, ``mlp``, ``neumf``, ``autoint``,
            ``nfm``, ``pnn``, ``lr`` (:data:`~recdim.config.arches.ARCHES`).
        embedding_dim: K, the common width every provider returns.
        mlp: hidden sizes of the deep part (DLRM's top MLP, DeepFM / W&D / MLP / NeuMF deep tower, the MLP
            of NFM and PNN).
        bottom_mlp: DLRM bottom MLP hidden sizes (its last layer is K wide).
        dropout: dropout in the deep parts (NFM: on the bi-interaction vector too).
        pooling: ``sum`` or ``mean`` pooling of multi-valued bags.
        attention_layers: AutoInt's interacting (self-attention) layers.
        attention_heads: AutoInt's attention heads per layer.
        attention_dim: AutoInt's width per head d'; a layer outputs ``attention_heads * attention_dim``.
        pnn_product: PNN's product layer: ``inner`` (IPNN), ``outer`` (OPNN) or ``both`` (PNN*).
        linear: where FM, DeepFM and LR take the per-id weight of their first-order term: ``embedding``
            (w_f . e_id, read from the provider's embedding, so a field pruned to 0 dims loses it too) or
            ``table`` (a one-weight-per-id table owned by the arch, :class:`~recdim.models.fm.LinearTable`,
            never pruned: PEP-0 is FM with this table and every embedding pruned away). Other arches
            take ``embedding`` only.
    """

    arch: Arch = "dlrm"
    embedding_dim: int = 16
    mlp: Tuple[int, ...] = (64, 32)
    bottom_mlp: Tuple[int, ...] = (32,)
    dropout: float = 0.0
    pooling: Literal["sum", "mean"] = "sum"
    attention_layers: int = 3
    attention_heads: int = 2
    attention_dim: int = 32
    pnn_product: PNNProduct = "inner"
    linear: LinearSource = "embedding"

    def __post_init__(self) -> None:
        if self.linear not in LINEAR_SOURCES:
            raise ValueError(f"model.linear must be one of {list(LINEAR_SOURCES)}, got {self.linear!r}")
        if self.linear == "table" and self.arch not in LINEAR_TABLE_ARCHES:
            raise ValueError(
                f"model.linear = 'table' needs an arch with a first-order term {list(LINEAR_TABLE_ARCHES)}, "
                f"got {self.arch!r}"
            )
        if self.embedding_dim <= 0 or self.embedding_dim % 4:
            raise ValueError(f"embedding_dim must be a positive multiple of 4 (FBGEMM's TBE), got {self.embedding_dim}")
        for name in ("attention_layers", "attention_heads", "attention_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Args:
        epochs: maximum epochs.
        batch_size: global batch size (split across ranks).
        eval_batch_size: batch size for validation / test.
        lr: learning rate of the dense parts (Adam).
        weight_decay: weight decay of the dense parts.
        embedding_optimizer: fused table optimizer. The CPU fused kernel supports ``rowwise_adagrad``,
            ``adagrad`` and ``sgd``; ``adam`` runs fused on GPU and on the dense kernel on CPU.
        embedding_lr: learning rate of the tables.
        embedding_l2: L2 penalty weight on the embeddings each batch looks up (``lambda * sum_b ||e_b||^2 / B``,
            applied as a gradient term so the fused table optimizers take it; 0 = none).
        patience: epochs without validation improvement before early stopping (0 disables it).
        max_steps: stop after this many steps in total (0 = no limit).
        seed: seed of initialisation and data order.
        device: ``cpu``, ``cuda`` or ``auto``.
        sharding: ``table_wise``, ``row_wise``, ``column_wise`` or ``auto`` (TorchRec's planner picks).
        log_every: steps between progress updates.
        progress: show a progress bar with samples/s.
        init_std: tables are initialised N(0, init_std^2) deterministically per (seed, table, row).
        checkpoint_every: steps between sharded checkpoints in ``<run dir>/ckpt`` (0 = none). A training
            command restarted on the same run directory resumes from the latest checkpoint.
        keep_checkpoints: complete checkpoints kept (the newest ones).
        resume: what a run directory holding a checkpoint written with a different config does:
            ``check`` refuses, naming the changed keys; ``fresh`` ignores the checkpoint and starts over
            (later checkpoints replace it); ``continue`` resumes with the new config deliberately
            (recorded in the results). Output-only keys (``progress``, ``log_every``, checkpoint
            settings) never count as changes.
        task: ``pointwise`` scores every row of a split (AUC / logloss, or MSE); ``topk`` is top-k
            recommendation: training adds sampled negatives, validation and test rank every item per user
            (Recall / MRR / NDCG at k, :mod:`recdim.train.ranking`), and ``ranking.select`` picks the epoch.
            ``topk`` needs binary labels (e.g. MovieLens ``prepare.task = "ctr"``).
        ranking: top-k settings (used when ``task = "topk"``).
    """

    epochs: int = 5
    batch_size: int = 512
    eval_batch_size: int = 8192
    lr: float = 1e-3
    weight_decay: float = 0.0
    embedding_optimizer: Literal["rowwise_adagrad", "adagrad", "sgd", "adam"] = "rowwise_adagrad"
    embedding_lr: float = 0.05
    embedding_l2: float = 0.0
    patience: int = 2
    max_steps: int = 0
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    sharding: Literal["table_wise", "row_wise", "column_wise", "auto"] = "table_wise"
    log_every: int = 50
    progress: bool = True
    init_std: float = 0.05
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: Literal["check", "fresh", "continue"] = "check"
    task: Literal["pointwise", "topk"] = "pointwise"
    ranking: RankingConfig = field(default_factory=RankingConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")


@dataclass(frozen=True)
class SearchConfig:
    """``recdim search``: which method, and each method's settings.

    Args:
        method: a search method of the registry (:mod:`recdim.config.methods`): ``dnis``, ``autosrh``
            (the same soft-selection search), ``pep`` or ``autodim`` (``--method`` on the command line
            overrides it).
        dnis: DNIS / AutoSrh settings.
        pep: PEP settings.
        autodim: AutoDim settings.
        baseline: uniform, grid, random and MDE baseline settings (used by ``recdim compare``).
        split: the search split carved from train, on which DNIS / AutoSrh and AutoDim take their
            architecture steps (never the validation split, which selects models).
    """

    method: str = "dnis"
    dnis: DNISConfig = field(default_factory=DNISConfig)
    pep: PEPConfig = field(default_factory=PEPConfig)
    autodim: AutoDimConfig = field(default_factory=AutoDimConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    split: SearchSplitConfig = field(default_factory=SearchSplitConfig)

    def __post_init__(self) -> None:
        entry("" if self.method is None else str(self.method), kind="search", field="search.method")


@dataclass(frozen=True)
class PruneConfig:
    """``recdim prune`` / ``recdim retrain``: budgets, tiers and how retraining starts.

    Args:
        crs: compression rates to prune to (uniform parameters / kept parameters; 4 keeps a quarter).
            DNIS / AutoSrh meet each exactly by magnitude; PEP uses its snapshots (one per budget it
            reached); AutoDim's selected dimensions imply one rate.
        eps: DNIS / AutoSrh magnitude threshold instead of ``crs`` (0 = use ``crs``).
        max_tiers: the most tier tables per pruned table.
        init: how retraining starts: ``method`` (each method's own rule: DNIS / AutoSrh keep the searched
            values with alpha folded in and the searched arch; PEP rewinds to the initial values under
            the mask, the lottery ticket; AutoDim starts fresh), ``inherit`` (searched values and arch)
            or ``fresh`` (new initial values under the mask, new arch).
        retrain: what retraining may change: ``all``; ``frozen_embeddings`` (AutoSrh's +FE: the tier tables keep
            their starting values, only the arch trains); ``frozen_interaction`` (+IF: the arch keeps its
            starting parameters, only the tables train); or ``none`` (AutoSrh's \\R: no training, the pruned
            model is scored as it starts, which must be the searched values). See :mod:`recdim.retrain.freeze`.
        score: what DNIS / AutoSrh and magnitude pruning rank: ``magnitude`` (``|v|`` of the effective
            weights, the papers' rule) or ``fisher`` (the held-out loss increase of zeroing each value,
            ½ v² Σ_s (∂ℓ_s/∂v)² over the search split, :mod:`recdim.search.importance`). PEP and AutoDim
            derive their masks from their own thresholds / weights and refuse ``fisher``.
        allocation: how DNIS / AutoSrh, magnitude pruning and PEP split a budget over fields: ``global`` (one
            ranking of the score over all tables, the papers' rule), ``field`` (each field keeps
            ``N_f · d_f`` values, d_f proportional to its held-out importance, the loss increase on the
            search split when its embedding is replaced by its mean, :mod:`recdim.search.field_importance`;
            the score ranks within the field; PEP ranks by survival keys of its final state) or ``method``
            (each method's default: ``field`` for DNIS / AutoSrh; ``global`` for magnitude pruning; PEP's
            snapshots). AutoDim refuses ``field``.
        field_confidence: under ``field`` allocation, the z of the lower confidence bound each field's
            importance is read at (I_f − z · SE_f over the search split's samples; 0 reads the means).
    """

    crs: Tuple[float, ...] = (2.0, 4.0, 8.0)
    eps: float = 0.0
    max_tiers: int = 4
    init: Literal["method", "inherit", "fresh"] = "method"
    retrain: Literal["all", "frozen_embeddings", "frozen_interaction", "none"] = "all"
    score: Literal["magnitude", "fisher"] = "magnitude"
    allocation: Literal["method", "global", "field"] = "method"
    field_confidence: float = 0.0

    def __post_init__(self) -> None:
        if self.allocation not in ("method", "global", "field"):
            raise ValueError(f"prune.allocation must be 'method', 'global' or 'field', got {self.allocation!r}")
        if not (self.field_confidence >= 0 and math.isfinite(self.field_confidence)):
            raise ValueError(f"prune.field_confidence must be a finite number >= 0, got {self.field_confidence!r}")
        if self.score not in ("magnitude", "fisher"):
            raise ValueError(f"prune.score must be 'magnitude' or 'fisher', got {self.score!r}")
        if any(c < 1 for c in self.crs):
            raise ValueError(f"compression rates must be >= 1, got {self.crs}")


@dataclass(frozen=True)
class Config:
    """A whole experiment: prepare, data, model, train and search sections (all optional in the file).

    Example::

        [prepare]
        source = "movielens"
        input = "../shared/datasets/ml-100k"
        output = "data/ml100k-rating"

        [model]
        arch = "mf"
    """

    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    @property
    def data_path(self) -> str:
        return self.data.path or self.prepare.output


def load(path: Optional[str], overrides: Tuple[str, ...] = ()) -> Config:
    """Loads a :class:`Config` from a TOML file plus overrides."""
    return load_config(Config, path, overrides)
