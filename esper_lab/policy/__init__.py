"""Policies (Tamiyo): baselines without learning and the learned PPO policy.

Every policy answers `act(results) -> actions` for a batch of environments in one call and
chooses only among the choices the plane's masks allow.
"""

from esper_lab.policy.agent import Agent, PolicyConfig, PPOPolicy  # learned policy (issue 4)
from esper_lab.policy.baselines import HeuristicPolicy, RandomPolicy
from esper_lab.policy.features import GLOBAL_FIELDS, SLOT_FIELDS, Observation, Observer  # issue 4
from esper_lab.policy.heads import HEADS, Decision  # issue 4

__all__ = [
    "HeuristicPolicy", "RandomPolicy",
    # learned policy (issue 4)
    "Agent", "Decision", "GLOBAL_FIELDS", "HEADS", "Observation", "Observer", "PPOPolicy", "PolicyConfig", "SLOT_FIELDS",
]  # fmt: skip
