"""The interaction arches recdim knows, by the name configs use (``model.arch``, ``compare.arches``).

Kept free of imports so that every config module can validate arch names. The arch classes live in
:mod:`recdim.models` (one file each), and :func:`recdim.models.factory.build_arch` maps each name to one.
"""

from __future__ import annotations

from typing import Iterable, Literal, Tuple, get_args

Arch = Literal["dlrm", "deepfm", "fm", "wide_deep", "mf", "mlp", "neumf", "autoint", "nfm", "pnn", "lr"]
ARCHES: Tuple[str, ...] = get_args(Arch)
PNNProduct = Literal["inner", "outer", "both"]
# Where the first-order (linear) term of FM, DeepFM and LR reads its per-id weights: ``embedding`` (w_f . e_id,
# from the provider's, possibly pruned, embedding) or ``table`` (a separate one-weight-per-id table of the arch).
LinearSource = Literal["embedding", "table"]
LINEAR_SOURCES: Tuple[str, ...] = get_args(LinearSource)
LINEAR_TABLE_ARCHES: Tuple[str, ...] = ("fm", "deepfm", "lr")


def check_arches(values: Iterable[str], field: str) -> None:
    """Raises ``ValueError`` naming ``field`` when a value is not an arch of :data:`ARCHES`.

    Example::

        check_arches(["fm", "dlrm"], "compare.arches")
    """
    unknown = [v for v in values if v not in ARCHES]
    if unknown:
        raise ValueError(f"{field}: unknown arch(es) {unknown}; expected one of {list(ARCHES)}")
