"""The six telemetry tables as explicit, versioned pyarrow schemas (DESIGN rule 5).

Every data table starts with the keys `run_id, env, episode, step`; `step` is the env step a
decision produced (1..episode_length), so a `decisions` row and the `steps`, `slots` and `events`
rows of the same key describe one decision and its outcome. Enum columns hold the fixed integer
values of `esper_lab.contracts` (never names); the store adds name lookups. The cohort and the
run are also folder names (`cohort=<c>/run=<id>`), which readers turn into columns, so `cohort`
is not stored inside the files.
"""

from __future__ import annotations

import enum

import pyarrow as pa

from esper_lab.contracts import AlphaCurve, AlphaTarget, BlendAlgorithm, Blueprint, EventKind, Op, Role, Site, Stage, Subtarget, Tempo
from esper_lab.policy.heads import HEADS  # the policy's factored heads, in sampling order

SCHEMA_VERSION = 1  # bump when a column changes type or meaning; readers union parts by name
TABLES = ("runs", "steps", "slots", "decisions", "events", "updates")
METADATA_KEY = b"esper_lab.schema_version"  # written into every part's Parquet metadata

# Enums the store turns into `<name>_names(value, name)` lookup tables.
ENUMS: dict[str, type[enum.IntEnum]] = {
    "op": Op, "stage": Stage, "blueprint": Blueprint, "blend": BlendAlgorithm, "curve": AlphaCurve,
    "tempo": Tempo, "target": AlphaTarget, "site": Site, "role": Role, "subtarget": Subtarget, "event_kind": EventKind,
}  # fmt: skip

KEYS = [("run_id", pa.string()), ("env", pa.int32()), ("episode", pa.int32()), ("step", pa.int32())]

# `MorphEnv` step metrics and their types; keys outside this list go to `extra_metrics`.
STEP_METRICS: dict[str, pa.DataType] = {
    "progress": pa.float64(), "train_loss": pa.float64(), "val_loss": pa.float64(),
    "val_accuracy": pa.float64(), "metric": pa.float64(), "metric_gain": pa.float64(),
    "metric_since_start": pa.float64(), "host_params": pa.int64(), "active_params": pa.int64(),
    "active_flops": pa.float64(), "active_param_budget_util": pa.float64(),
    "active_flops_budget_util": pa.float64(), "occupied_slots": pa.int32(), "n_slots": pa.int32(),
    "veto": pa.bool_(), "rollback": pa.bool_(), "roi_params": pa.float64(), "roi_flops": pa.float64(),
    "level_change_rate": pa.float64(), "net_level_change": pa.float64(),
}  # fmt: skip
REWARD_PARTS = ("task", "rent", "churn", "intervention", "total")

# Types of the plane report's columns, `plane.SLOT_COLUMNS` in order (the report is float32;
# ids and counts below 2**24 are exact in it). A test keeps the two in step.
SLOT_TYPES: dict[str, pa.DataType] = {
    "surface_uid": pa.int32(), "depth_norm": pa.float32(), "site": pa.int8(), "role": pa.int8(),
    "stage": pa.int8(), "blueprint": pa.int8(), "alpha": pa.float32(), "alpha_target": pa.float32(),
    "blend": pa.int8(), "internal_level": pa.int16(), "internal_level_norm": pa.float32(),
    "max_level": pa.int16(), "focus_idx": pa.int16(), "focus_subtarget": pa.int8(),
    "focus_internal_level_norm": pa.float32(), "internal_level_mean_norm": pa.float32(),
    "internal_level_max_norm": pa.float32(), "seed_param_count_active": pa.int64(),
    "seed_flops_active_est": pa.float32(), "delta_l2_norm": pa.float32(), "output_l2_norm": pa.float32(),
    "seed_grad_norm": pa.float32(), "grad_ratio": pa.float32(), "embargo_remaining": pa.int16(),
    "germinations": pa.int32(),
}  # fmt: skip

# Columns that come from the policy's internals (null for baseline policies).
POLICY_COLUMNS = (*(f"{h}_{part}" for h in HEADS for part in ("logp", "entropy", "mask")), "value", "logp", "sampled_legal")

# PPO update statistics with their own columns; other keys go to `extra`.
UPDATE_STATS = (
    "policy_loss", "value_loss", "entropy_loss", "total_loss", "entropy",
    *(f"entropy_{h}" for h in HEADS),
    "approx_kl", "clip_fraction", "explained_variance", "grad_norm", "lr",
    "env_steps", "rollout_seconds", "update_seconds",
)  # fmt: skip

_MAP = pa.map_(pa.string(), pa.float64())
_TIME = pa.timestamp("us", tz="UTC")


def _schema(fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    return pa.schema(fields, metadata={METADATA_KEY: str(SCHEMA_VERSION).encode()})


SCHEMAS: dict[str, pa.Schema] = {
    "runs": _schema([
        ("schema_version", pa.int32()), ("run_id", pa.string()), ("kind", pa.string()),
        ("preset", pa.string()), ("task", pa.string()), ("seed", pa.int64()), ("config_json", pa.string()),
        ("versions", pa.string()), ("git_sha", pa.string()), ("git_dirty", pa.bool_()),
        ("torch_threads", pa.int32()),  # float reductions depend on it: replay uses the same count
        ("parent_run", pa.string()), ("branch_step", pa.int32()),
        ("started_at", _TIME), ("ended_at", _TIME), ("status", pa.string()), ("error", pa.string()),
        ("steps_recorded", pa.int64()),
    ]),
    "steps": _schema([
        *KEYS, ("done", pa.bool_()),
        *STEP_METRICS.items(),
        *((f"reward_{p}", pa.float64()) for p in REWARD_PARTS),
        ("extra_metrics", _MAP),
    ]),
    "slots": _schema([*KEYS, ("slot", pa.int16()), *SLOT_TYPES.items()]),
    "decisions": _schema([
        *KEYS,
        *((h, pa.int16()) for h in HEADS),
        *((f"{h}_logp", pa.float64()) for h in HEADS),
        *((f"{h}_entropy", pa.float64()) for h in HEADS),
        *((f"{h}_mask", pa.list_(pa.bool_())) for h in HEADS),
        ("value", pa.float64()), ("logp", pa.float64()),
        # every head's sampled value was allowed by its mask (null without masks): the
        # invalid-action rate, decided once at record time rather than by unpacking masks per query
        ("sampled_legal", pa.bool_()),
        # what the env executed: the chosen op, or WAIT when the governor vetoed it
        ("executed_op", pa.int8()), ("executed_slot", pa.int16()), ("vetoed", pa.bool_()),
        # the config the executed op applied; null for fields the op ignores
        ("resolved_blueprint", pa.int8()), ("resolved_blend", pa.int8()), ("resolved_curve", pa.int8()),
        ("resolved_tempo", pa.int8()), ("resolved_tempo_steps", pa.int16()),
        ("resolved_target", pa.int8()), ("resolved_alpha_target", pa.float32()),
    ]),
    "events": _schema([
        *KEYS, ("seq", pa.int16()), ("kind", pa.int8()), ("slot", pa.int16()), ("surface_uid", pa.int32()),
        ("name", pa.string()), ("value", pa.float64()),
    ]),
    "updates": _schema([
        ("run_id", pa.string()), ("update", pa.int64()),
        *((name, pa.float64()) for name in UPDATE_STATS),
        ("extra", _MAP),
    ]),
}
