"""What a study records and plays: run kinds and statuses (the `runs` table), member statuses (a
pack member's status file), and the arms a held-out evaluation plays."""

from __future__ import annotations

import enum


class RunKind(enum.StrEnum):
    """What made a run (the `runs` table's `kind`)."""

    BASELINE = "baseline"  # episodes recorded outside a study (a notebook's, the CLI's): the default
    PPO = "ppo"  # a policy's training
    EVAL = "eval"  # one arm's held-out episodes
    AUDIT = "audit"  # an audit's replicate episodes
    PROBE_PRUNE = "probe_prune"  # the audit demo's probe-and-prune episodes
    REPLAY = "replay"  # a recorded run played again from its seeds
    BRANCH = "branch"  # a recorded run played from one of its steps with another action


class RunStatus(enum.StrEnum):
    """Where a run's record stands (a manifest's `status`)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"  # raised; the manifest holds the error
    KILLED = "killed"  # stopped from outside: Ctrl-C, SIGTERM, or found stale after its writer died


class MemberStatus(enum.StrEnum):
    """Where a pack member stands (its status file)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # its runner stopped before it ended (resumes on the next `pack run`)


# The arms of a held-out evaluation. The static frontier's wider hosts always WAIT on the host with
# every width (or d_model) times the scale. With the task's own host (`static`) they span the
# smallest host to twice its width, beyond any organism the param budget allows (1.5x the host's
# params in seeds: digits_cnn's 5,050-param host grows to at most ~12.6k, its 2x host has 19,562).
WIDTH_SCALES = {"static_w125": 1.25, "static_w150": 1.5, "static_w200": 2.0}
CONTROL = "static"  # the arm every other is paired against: the task's own host, always WAIT
STATIC_ARMS = (CONTROL, *WIDTH_SCALES)  # the points of the static frontier, narrowest first
GREEDY, SAMPLED = "ppo_greedy", "ppo_sampled"  # the trained policy, its most likely action or a draw
LEARNED_ARMS = (GREEDY, SAMPLED)  # the arms that play a trained agent
# best_schedule: the schedule a random search found at the policy's training budget (`search`);
# a search costs as much env stepping as PPO's training, so a pack names it in `arms` to play it.
SCHEDULE_ARM = "best_schedule"
GAIN_TRIGGER = "gain_trigger"
# gain_trigger: germinate where a first-order score of gain per parameter passes a threshold
# (`policy.GainTriggerPolicy`), the non-learned controller growing-network papers use.
# oracle: when the settings name one; the planter arms (the decay studies' scripted Tamiyo, which
# plants fossils for Emrakul; `planter_regrow` also regrows the scars) when they name `arms`.
PLANTER, REGROWER = "planter", "planter_regrow"
ARMS = (GREEDY, SAMPLED, *STATIC_ARMS, "heuristic", "random", GAIN_TRIGGER, SCHEDULE_ARM, "oracle", PLANTER, REGROWER)
DEFAULT_ARMS = (GREEDY, SAMPLED, *STATIC_ARMS, "heuristic", "random", GAIN_TRIGGER, "oracle")
CONTROLLERS = (GAIN_TRIGGER, SCHEDULE_ARM)  # non-learned growth controls the learned policy must beat
