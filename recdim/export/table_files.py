"""One table of an artifact: its packed tensors and manifest entry, and the way back to a plan and tier values.

The file ``tables/<i>-<table>.safetensors`` holds the :class:`~recdim.layout.packed_table.PackedTable`
tensors; the manifest entry holds its header (sizes, mask kind, values dtype, tiers) and ``bytes``:

- as stored: ``values``, ``scales`` (int8 scale + bias), ``mask``, ``rows`` (kept-row bitmap), ``tiers``
  (shared column maps, explicit tier index), ``total``;
- the same mask in other layouts: ``uniform`` (N * K * 4), ``csr``, ``coo``, ``floor`` (nnz * 4 +
  ceil(N * K / 8)), ``nnz``, and ``training`` (the tier tables, column maps and remap the training
  lookup holds, see :meth:`~recdim.layout.tier_plan.TablePlan.bytes`).

Reading recomputes every entry from the tensors and refuses a manifest that disagrees.

Example::

    tensors, entry = encode_table(plan, tier_values, "float16")
    plan2, values2, _ = decode_table(entry, tensors)
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch

from recdim.export.packed_plan import unpack_plan
from recdim.layout.packed_table import PackedTable, pack_table
from recdim.layout.tier_plan import TablePlan

STORED_KEYS = ("values", "scales", "mask", "rows", "tiers", "total")
REFERENCE_KEYS = ("uniform", "csr", "coo", "floor", "nnz", "training")
BYTE_KEYS = STORED_KEYS + REFERENCE_KEYS


def table_bytes(plan: TablePlan, packed: PackedTable) -> Dict[str, int]:
    """Bytes as stored beside the uniform / CSR / COO / floor / training-layout costs (module docstring)."""
    ref = plan.bytes()
    out = dict(packed.stored_bytes())
    out.update(uniform=ref.uniform, csr=ref.csr, coo=ref.coo, floor=ref.floor, nnz=ref.nnz, training=ref.total)
    return out


def encode_table(
    plan: TablePlan, tier_values: Sequence[torch.Tensor], values_dtype: str = "float32"
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The tensors and manifest entry (without its ``file``) of one table.

    Args:
        plan: the table's plan.
        tier_values: per tier, [n_j, d_j].
        values_dtype: ``"float32"``, ``"float16"`` or ``"int8"``.

    Raises:
        ValueError: tier tensors that do not fit the plan, or values the dtype cannot hold.
    """
    if len(tier_values) != len(plan.tiers):
        raise ValueError(f"table {plan.name}: {len(tier_values)} tier tensors for {len(plan.tiers)} tiers")
    for t, v in zip(plan.tiers, tier_values):
        if tuple(v.shape) != (t.num_rows, t.width):
            raise ValueError(f"{t.name}: values {tuple(v.shape)} != [{t.num_rows}, {t.width}]")
    packed = pack_table(plan, tier_values, values_dtype)
    entry = packed.header()
    entry["bytes"] = table_bytes(plan, packed)
    return packed.tensors(), entry


def decode_table(
    entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> Tuple[TablePlan, List[torch.Tensor], Dict[str, int]]:
    """The plan, tier values ([n_j, d_j] float32) and bytes of a table read back.

    Raises:
        ValueError: tensors that contradict the entry, or an entry whose ``bytes`` are not what the
            tensors hold (the message names the tensor or field).
        KeyError: a missing entry field.
    """
    packed = PackedTable.from_tensors(entry, tensors)
    plan, values = unpack_plan(packed)
    got = table_bytes(plan, packed)
    claimed = entry["bytes"]
    wrong = [k for k in BYTE_KEYS if claimed.get(k) != got[k]]
    if wrong or set(claimed) != set(BYTE_KEYS):
        raise ValueError(f"bytes {claimed} do not match the tensors ({got})")
    return plan, values, got
