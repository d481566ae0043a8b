"""Policies (Tamiyo): baselines without learning and the learned PPO policy.

Every policy answers `act(results) -> actions` for a batch of environments in one call and
chooses only among the choices the plane's masks allow.
"""

from esper_lab.policy.agent import Agent, PolicyConfig, PPOPolicy
from esper_lab.policy.baselines import HeuristicPolicy, OraclePolicy, PlanterPolicy, RandomPolicy, StaticPolicy
from esper_lab.policy.features import GLOBAL_FIELDS, SLOT_FIELDS, Observation, Observer
from esper_lab.policy.heads import Decision
from esper_lab.policy.schedules import SchedulePolicy
from esper_lab.policy.trigger import GainTriggerPolicy

__all__ = [
    "Agent",
    "Decision",
    "GainTriggerPolicy",
    "GLOBAL_FIELDS",
    "HeuristicPolicy",
    "Observation",
    "Observer",
    "OraclePolicy",
    "PlanterPolicy",
    "PPOPolicy",
    "PolicyConfig",
    "RandomPolicy",
    "SLOT_FIELDS",
    "SchedulePolicy",
    "StaticPolicy",
]
