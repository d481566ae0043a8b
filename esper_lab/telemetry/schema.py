"""The seven telemetry tables as explicit, versioned pyarrow schemas (DESIGN rule 5).

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

from esper_lab.contracts import (
    HEADS,
    REWARD_PARTS,
    SLOT_COLUMN_TYPES,
    STEP_METRIC_TYPES,
    AlphaCurve,
    AlphaTarget,
    BlendAlgorithm,
    Blueprint,
    EventKind,
    Op,
    Role,
    Site,
    Stage,
    Subtarget,
    Tempo,
)

# 2: in-forward/incubating params, contributions, full_metric, episode seeds, the run's three
# configs and its eval arm; head entropies null where the head was not used
# bump when a column changes type or meaning; readers union parts by name (4: Emrakul's heads; 5: the economy's slot
# columns; 6: the test split's metric and the training FLOPs per step)
SCHEMA_VERSION = 6
TABLES = ("runs", "steps", "slots", "decisions", "events", "updates", "audits")
# Columns that say how fast a row was made, not what happened: they differ between any two runs.
TIMING_COLUMNS = {"updates": ("rollout_seconds", "update_seconds")}
METADATA_KEY = b"esper_lab.schema_version"  # written into every part's Parquet metadata

# Enums the store turns into `<name>_names(value, name)` lookup tables.
ENUMS: dict[str, type[enum.IntEnum]] = {
    "op": Op,
    "stage": Stage,
    "blueprint": Blueprint,
    "blend": BlendAlgorithm,
    "curve": AlphaCurve,
    "tempo": Tempo,
    "target": AlphaTarget,
    "site": Site,
    "role": Role,
    "subtarget": Subtarget,
    "event_kind": EventKind,
}

KEYS = [("run_id", pa.string()), ("env", pa.int32()), ("episode", pa.int32()), ("step", pa.int32())]

# The env's step metrics and the plane report's columns, typed as `contracts` declares them.
STEP_TYPES: dict[str, pa.DataType] = {name: pa.type_for_alias(alias) for name, alias in STEP_METRIC_TYPES.items()}
SLOT_TYPES: dict[str, pa.DataType] = {name: pa.type_for_alias(alias) for name, alias in SLOT_COLUMN_TYPES.items()}

# Columns that come from the policy's internals (null for baseline policies).
POLICY_COLUMNS = (*(f"{h}_{part}" for h in HEADS for part in ("logp", "entropy", "mask")), "value", "logp", "sampled_legal")

# PPO update statistics with their own columns; other keys go to `extra`.
UPDATE_STATS = (
    "policy_loss",
    "value_loss",
    "entropy_loss",
    "total_loss",
    "entropy",
    *(f"entropy_{h}" for h in HEADS),
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "grad_norm",
    "lr",
    "env_steps",
    "rollout_seconds",
    "update_seconds",
)

_MAP = pa.map_(pa.string(), pa.float64())
_TIME = pa.timestamp("us", tz="UTC")


def _schema(fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    return pa.schema(fields, metadata={METADATA_KEY: str(SCHEMA_VERSION).encode()})


SCHEMAS: dict[str, pa.Schema] = {
    "runs": _schema(
        [
            ("schema_version", pa.int32()),
            ("run_id", pa.string()),
            ("kind", pa.string()),
            ("arm", pa.string()),  # eval runs: which policy played the held-out episodes
            ("preset", pa.string()),
            ("task", pa.string()),
            ("seed", pa.int64()),
            ("config_json", pa.string()),
            ("ppo_config_json", pa.string()),
            ("policy_config_json", pa.string()),  # null without a learned policy
            ("versions", pa.string()),
            ("git_sha", pa.string()),
            ("git_dirty", pa.bool_()),
            ("torch_threads", pa.int32()),  # float reductions depend on it: replay uses the same count
            ("parent_run", pa.string()),
            ("branch_step", pa.int32()),
            ("started_at", _TIME),
            ("ended_at", _TIME),
            ("status", pa.string()),
            ("error", pa.string()),
            ("steps_recorded", pa.int64()),
            ("pid", pa.int64()),
            ("host", pa.string()),  # who writes it: a `running` run whose process is gone is stale
        ]
    ),
    "steps": _schema(
        [
            *KEYS,
            ("done", pa.bool_()),
            ("episode_seed", pa.int64()),
            *STEP_TYPES.items(),
            *((f"reward_{p}", pa.float64()) for p in REWARD_PARTS),
            ("extra_metrics", _MAP),
        ]
    ),
    "slots": _schema([*KEYS, ("slot", pa.int16()), *SLOT_TYPES.items()]),
    "decisions": _schema(
        [
            *KEYS,
            *((h, pa.int16()) for h in HEADS),
            *((f"{h}_logp", pa.float64()) for h in HEADS),
            *((f"{h}_entropy", pa.float64()) for h in HEADS),
            *((f"{h}_mask", pa.list_(pa.bool_())) for h in HEADS),
            ("value", pa.float64()),
            ("logp", pa.float64()),
            # every head's sampled value was allowed by its mask (null without masks): the
            # invalid-action rate, decided once at record time rather than by unpacking masks per query
            ("sampled_legal", pa.bool_()),
            # what the env executed: the chosen op, or WAIT when the governor vetoed it
            ("executed_op", pa.int8()),
            ("executed_slot", pa.int16()),
            ("vetoed", pa.bool_()),
            # the config the executed op applied; null for fields the op ignores
            ("resolved_blueprint", pa.int8()),
            ("resolved_blend", pa.int8()),
            ("resolved_curve", pa.int8()),
            ("resolved_tempo", pa.int8()),
            ("resolved_tempo_steps", pa.int16()),
            ("resolved_target", pa.int8()),
            ("resolved_alpha_target", pa.float32()),
        ]
    ),
    "events": _schema(
        [
            *KEYS,
            ("seq", pa.int16()),
            ("kind", pa.int8()),
            ("slot", pa.int16()),
            ("surface_uid", pa.int32()),
            ("name", pa.string()),
            ("value", pa.float64()),
        ]
    ),
    "updates": _schema(
        [
            ("run_id", pa.string()),
            ("update", pa.int64()),
            *((name, pa.float64()) for name in UPDATE_STATS),
            ("extra", _MAP),
        ]
    ),
    # One row per seed an audit credited (esper_lab.audit, seed 003 §5.3): its exact Shapley value
    # under a full-retraining protocol, beside what the audited run measured about it (the online
    # probe) and decided (its fate): labels a critic can learn from. The keys are the audit's run id
    # and the audited env, episode and step (the budget); `audited_run` is the run audited.
    "audits": _schema(
        [
            *KEYS,
            ("audited_run", pa.string()),
            ("slot", pa.int16()),
            ("surface_uid", pa.int32()),
            ("blueprint", pa.int8()),
            ("germinated_step", pa.int32()),
            ("phi", pa.float64()),
            ("phi_low", pa.float64()),
            ("phi_high", pa.float64()),  # mean over replicates, 95% t interval
            ("phi_replicates", pa.list_(pa.float64())),  # the exact value of each replicate (common random numbers)
            ("loo", pa.float64()),  # leave-one-out v(C) - v(C minus this seed), mean over replicates
            ("contribution", pa.float64()),
            ("contribution_step", pa.int32()),  # the online probe's last value by `step`
            ("fate_op", pa.int8()),
            ("fate_step", pa.int32()),  # the run's PRUNE or FOSSILIZE of it after `step`; null: kept
            ("candidates", pa.int16()),
            ("replicates", pa.int16()),
            ("subset_values", pa.map_(pa.string(), pa.list_(pa.float64()))),  # "{3,5}" -> v of that coalition per replicate
            ("metric", pa.string()),
            ("protocol_json", pa.string()),
            ("wall_seconds", pa.float64()),
        ]
    ),
}
