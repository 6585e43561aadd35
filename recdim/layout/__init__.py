"""Tensor-only descriptions every stage shares: tier plans and values, masks, frequency blocks, dim assignments.

Nothing here is an ``nn.Module`` and nothing here imports a stage (modules, search, prune, retrain, export):
providers in :mod:`recdim.modules` read these records, and the stages that produce them import them from here.

- :mod:`recdim.layout.tier_plan`: :class:`TablePlan` / :class:`TierPlan`, id remaps, byte accounting.
- :mod:`recdim.layout.tier_values`: a table's values cut into its tiers, and back.
- :mod:`recdim.layout.masks`: masks at a budget (exact-count magnitude pruning, prefix and non-zero masks).
- :mod:`recdim.layout.blocks`: frequency blocks (:class:`BlockPlan`) of DNIS / AutoSrh and the baselines.
- :mod:`recdim.layout.dims`: per-row dimension assignments (:class:`DimAssignment`, segments, projections).
- :mod:`recdim.layout.mixed_dim_blocks`: the per-block layout of mixed-dimension (MDE) tables.
- :mod:`recdim.layout.packed_table`: a table as the serving artifact stores it, at the byte floor (with
  :mod:`~recdim.layout.bitmap`, :mod:`~recdim.layout.bitpack`, :mod:`~recdim.layout.row_lengths`,
  :mod:`~recdim.layout.subset_rank` and :mod:`~recdim.layout.value_codec`).
"""
