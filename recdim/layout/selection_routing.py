"""Where a soft-selection provider looks every feature up, and how its ids find their alpha rows.

Pure bookkeeping (lists only, no modules) over the frequency blocks and each feature's selection path,
so that :class:`~recdim.modules.soft_selection.SoftSelectionProvider` only builds tables and buffers
from it. A path is anything with ``pooled``, ``keys(feature, L)`` and ``key_of_block(L)``
(:class:`~recdim.modules.selection_paths.SelectionPath`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from recdim.layout.blocks import BlockPlan


@dataclass
class SelectionRouting:
    """The routed-KJT layout of a soft-selection provider.

    Slots are the EBC's keys (the features on pooled paths, in feature order, each with the keys its
    path asks for) followed by one EC key per feature on the non-pooled path.

    Args:
        ebc_keys: KJT keys of the EBC slots.
        pooled_features: features on pooled paths, in order.
        seq_features: features on the non-pooled path, in order (EC slots).
        slot_start: per feature, its first slot.
        slot_of_block: per (feature, block), in feature order, the slot its ids go to.
        row_of_block: per (feature, block), its alpha row.
        feature_offsets: per feature, its first global id.
        block_starts: per (feature, block), its first global id.
        groups: ``(path, feature indices, EBC slots)`` per distinct path, in first-use order (EBC slots
            empty for the non-pooled path).
        inverse: output position of each feature in the concatenation of the groups' outputs.
    """

    ebc_keys: List[str]
    pooled_features: List[str]
    seq_features: List[str]
    slot_start: Dict[str, int]
    slot_of_block: List[int]
    row_of_block: List[int]
    feature_offsets: List[int]
    block_starts: List[int]
    groups: List[Tuple[Any, List[int], List[int]]]
    inverse: List[int]

    @staticmethod
    def build(plan: BlockPlan, paths: Mapping[str, Any]) -> "SelectionRouting":
        """The routing of ``plan``'s features, each on ``paths[feature]`` (features sharing a path object
        form one group).

        Example::

            r = SelectionRouting.build(plan, provider.paths)
            r.ebc_keys      # ["user", "genres__b0", "genres__b1", ...]
        """
        features: Sequence[str] = list(plan.features)
        L = plan.num_blocks
        pooled_f = [f for f in features if paths[f].pooled]
        seq_f = [f for f in features if not paths[f].pooled]
        slot_start: Dict[str, int] = {}
        ebc_keys: List[str] = []
        for f in pooled_f:
            slot_start[f] = len(ebc_keys)
            ebc_keys += paths[f].keys(f, L)
        for j, f in enumerate(seq_f):
            slot_start[f] = len(ebc_keys) + j
        slot_of_block = [slot_start[f] + k for f in features for k in paths[f].key_of_block(L)]
        row_of_block = [plan.alpha_row_offset(f) + b for f in features for b in range(L)]
        offsets, starts = [0], []
        for bounds in plan.boundaries:
            starts += [offsets[-1] + b for b in bounds[:-1]]
            offsets.append(offsets[-1] + bounds[-1])
        groups: List[Tuple[Any, List[int], List[int]]] = []
        for path in dict.fromkeys(paths[f] for f in features):
            idx = [i for i, f in enumerate(features) if paths[f] is path]
            slots = [
                s
                for i in idx
                for s in range(slot_start[features[i]], slot_start[features[i]] + len(path.keys(features[i], L)))
            ]
            groups.append((path, idx, slots if path.pooled else []))
        order = [i for _, idx, _ in groups for i in idx]
        inverse = [order.index(i) for i in range(len(features))]
        return SelectionRouting(
            ebc_keys, pooled_f, seq_f, slot_start, slot_of_block, row_of_block, offsets[:-1], starts, groups, inverse
        )
