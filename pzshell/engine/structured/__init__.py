"""GQA-aware structured pruning: units, importance, allocation and surgery.

Units (what is removed together):

* **attention**: a KV group, one key/value head and the ``q:kv`` query heads that read it
  (rows of ``q_proj``/``k_proj``/``v_proj``, the matching columns of ``o_proj``), so the
  query-to-key/value head ratio of grouped-query attention never changes;
* **mlp**: an intermediate channel (a row of ``gate_proj`` and ``up_proj``, a column of
  ``down_proj``);
* **depth**: a block left with no attention group and no MLP channel is an identity map and can
  be removed from the model.

The parts, in the order a run uses them:

* :mod:`.anatomy`: a block's prunable pieces (:class:`BlockParts`), unit costs, parameter counts;
* :mod:`.statistics`: the dense model's calibration statistics (gradient moments, activations,
  block distances) through the statistics core :mod:`pzshell.engine.stats`;
* :mod:`.importance`: per-weight scores (first/second-order Taylor, Wanda, or a formula of the
  metric language) summed per unit;
* :mod:`.allocation`: which units go: *global* (importance per parameter over the whole model, a
  fractional knapsack) or *layer-wise* (a budget per block from a block importance, split
  between attention and MLP by a fixed ``A:M`` share); :func:`make_plan`;
* :mod:`.surgery`: new, smaller ``nn.Linear`` modules, so the pruned model really is smaller and
  faster; empty blocks removed;
* :mod:`.summary`: the unit table (CSV), the kept-fraction plot, the per-kind summary.

Saving and loading a pruned model (its per-block shapes) is the model format's:
:mod:`pzshell.models.structure`; its names are re-exported here for existing imports. The driver
that loads data, evaluates and saves is :mod:`pzshell.jobs.structured_job`.
"""

from __future__ import annotations

from ...models.structure import (
    FORMAT,
    STRUCTURE_FILE,
    EmptyAttention,
    EmptyMLP,
    group_rows,
    has_custom_structure,
    is_structured_dir,
    load_structured,
    reshape_to_structure,
    save_model,
    save_structured,
    slice_linear,
    structure_of,
)
from .allocation import (
    STRATEGIES,
    Plan,
    UnitTable,
    allocate_global,
    allocate_layerwise,
    block_weights,
    check_feasible,
    check_ratio,
    frozen_blocks,
    make_plan,
    parse_distribution,
    round_units,
    waterfill,
)
from .anatomy import (
    ATTN,
    KIND_NAMES,
    MLP,
    BlockParts,
    StructuredError,
    block_parts,
    linear_params,
    model_params,
    model_parts,
    prunable_params,
)
from .importance import (
    BUILTIN_IMPORTANCE,
    Importance,
    attention_group_scores,
    mlp_channel_scores,
    parse_importance,
    unit_importance,
    weight_scores,
)
from .statistics import LAYER_IMPORTANCE, BlockDistances, CalibStats, collect_stats
from .summary import kind_summary, plot_kept, write_units_csv
from .surgery import (
    SurgeryReport,
    apply_plan,
    is_empty_block,
    prune_attention,
    prune_mlp,
    remove_blocks,
)

__all__ = [
    "ATTN",
    "BUILTIN_IMPORTANCE",
    "FORMAT",
    "KIND_NAMES",
    "LAYER_IMPORTANCE",
    "MLP",
    "STRATEGIES",
    "STRUCTURE_FILE",
    "BlockDistances",
    "BlockParts",
    "CalibStats",
    "EmptyAttention",
    "EmptyMLP",
    "Importance",
    "Plan",
    "StructuredError",
    "SurgeryReport",
    "UnitTable",
    "allocate_global",
    "allocate_layerwise",
    "apply_plan",
    "attention_group_scores",
    "block_parts",
    "block_weights",
    "check_feasible",
    "check_ratio",
    "collect_stats",
    "frozen_blocks",
    "group_rows",
    "has_custom_structure",
    "is_empty_block",
    "is_structured_dir",
    "kind_summary",
    "linear_params",
    "load_structured",
    "make_plan",
    "mlp_channel_scores",
    "model_params",
    "model_parts",
    "parse_distribution",
    "parse_importance",
    "plot_kept",
    "prunable_params",
    "prune_attention",
    "prune_mlp",
    "remove_blocks",
    "reshape_to_structure",
    "round_units",
    "save_model",
    "save_structured",
    "slice_linear",
    "structure_of",
    "unit_importance",
    "waterfill",
    "weight_scores",
    "write_units_csv",
]
