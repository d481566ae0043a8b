"""Every knob of a study in one place: the run config, PPO, the policy and the loop's budget.

Keys are spelled the same everywhere: in a pack file's cohorts and presets, and on the command
line as `--set KEY=VALUE`:

    batch_size=32  economy.rent_weight=0.5  decay.enabled=true  ppo.lr=1e-3  policy.encoder=slot_transformer  rounds=40

Top-level keys are `RunConfig` fields or the loop's own (`LOOP_KEYS`); `economy.*`, `decay.*`,
`ppo.*` and `policy.*` reach `EconomyConfig`, `DecayConfig`, `PPOConfig` and `PolicyConfig`. Values are TOML literals
(`[4, 8]`, `{op = 0.02}`, `1e-3`, `true`); anything else is a string. Every key and value is
checked before any compute, and an error names the key and what it allows.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from typing import Any

from esper_lab import checks
from esper_lab.config import DecayConfig, EconomyConfig, RunConfig
from esper_lab.contracts import ARMS, DEFAULT_ARMS, SCHEDULE_ARM, Blueprint
from esper_lab.env import slot_count
from esper_lab.experiments.workers import cores
from esper_lab.policy import PlanterPolicy, PolicyConfig
from esper_lab.ppo import PPOConfig

# The training loop's budget: PPO rounds, environments (and worker processes stepping them; None:
# one per core this study may use, see `auto_workers`), and held-out evaluation episodes per arm.
LOOP_KEYS = {"rounds": 10, "envs": 4, "workers": None, "eval_episodes": 0}
# The blueprint the scripted oracle arm grows on the held-out episodes (`policy.OraclePolicy`:
# germinate it at the deepest surface at step 1, advance as fast as the lifecycle allows); None:
# no oracle arm. It shows what growth can buy in this setup, so a learned policy has a target.
ORACLE_KEY = "oracle"
# The blueprint the planter arms plant and fossilise at every surface (`policy.PlanterPolicy`,
# the decay studies' scripted Tamiyo); None: no planter arm. With a learned Emrakul
# (`decay.learned`) the planter is also the Tamiyo she trains and plays beside.
PLANTER_KEY = "planter"
# Which arms play the held-out episodes (`contracts.ARMS`); None: every arm the settings allow
# (`evaluation.played_arms`). Without a PPO arm, `rounds = 0` is allowed: nothing is trained.
ARMS_KEY = "arms"
BLUEPRINT_KEYS = (ORACLE_KEY, PLANTER_KEY)

SECTIONS = {"economy": EconomyConfig, "decay": DecayConfig, "ppo": PPOConfig, "policy": PolicyConfig}
RUN_SECTIONS = ("economy", "decay")  # the sections that are RunConfig fields
RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in RUN_SECTIONS)


@dataclass(frozen=True)
class Settings:
    run: RunConfig
    ppo: PPOConfig
    policy: PolicyConfig
    rounds: int
    envs: int
    workers: int
    eval_episodes: int
    oracle: Blueprint | None = None
    planter: Blueprint | None = None
    arms: tuple[str, ...] | None = None

    @classmethod
    def build(cls, values: dict[str, Any]) -> Settings:
        """Settings from nested values (as a pack file or `parse_assignments` gives them)."""
        values = dict(values)
        unknown = sorted(set(values) - set(RUN_KEYS) - set(SECTIONS) - set(LOOP_KEYS) - {*BLUEPRINT_KEYS, ARMS_KEY})
        if unknown:
            allowed = ", ".join([*RUN_KEYS, *(f"{s}.*" for s in SECTIONS), *LOOP_KEYS, *BLUEPRINT_KEYS, ARMS_KEY])
            raise checks.ConfigError(f"unknown keys {unknown} (allowed: {allowed})")
        sections = {name: values.pop(name, {}) for name in SECTIONS}
        for name, section in sections.items():
            checks.fields(name, section, SECTIONS[name])
        scripted = {key: values.pop(key, None) for key in BLUEPRINT_KEYS}
        arms = _arms(values.pop(ARMS_KEY, None))
        given = set(values)
        loop = {key: values.pop(key, default) for key, default in LOOP_KEYS.items()}
        if loop["workers"] is None:
            loop["workers"] = auto_workers(loop["envs"]) if isinstance(loop["envs"], int) else 0
        trains = arms is None or any(a.startswith("ppo") for a in arms)
        budget = trains or SCHEDULE_ARM in arms  # the rounds train the ppo arms; a schedule search spends their env steps
        for key, value in loop.items():
            checks.integer(key, value, low=1 if key == "envs" or (key == "rounds" and budget) else 0)
        if not budget and loop["rounds"] and "rounds" in given:
            raise checks.ConfigError(f"rounds={loop['rounds']} would train a policy no arm plays (arms {list(arms)}): set rounds = 0")
        if not budget:
            loop["rounds"] = 0  # the default budget trains; nothing here would play what it learned
        if loop["workers"] > loop["envs"]:
            raise checks.ConfigError(f"workers={loop['workers']} must be at most envs={loop['envs']}")
        run = RunConfig(**values, **{name: _section(name, SECTIONS[name], sections[name]) for name in RUN_SECTIONS})
        ppo = _section("ppo", PPOConfig, {"seed": run.seed, **sections["ppo"]})
        policy_values = sections["policy"]
        # Emrakul's heads are learned when decay.learned; Tamiyo's unless the planter plays her
        role = ("emrakul" if scripted[PLANTER_KEY] is not None else "both") if run.decay.learned else "tamiyo"
        if policy_values.get("role", role) != role:
            raise checks.ConfigError(f"policy.role={policy_values['role']!r}: decay.learned and planter make it {role!r} here")
        policy_values = {**policy_values, "role": role}
        if run.decay.learned:
            if not trains:
                raise checks.ConfigError("decay.learned=true trains Emrakul's heads: arms must include ppo_greedy or ppo_sampled")
            rules = [a for a in arms or () if a.startswith("planter")]
            if rules:
                raise checks.ConfigError(
                    f"arms {rules} play Tamiyo's script beside a learned Emrakul that never acts; "
                    "with decay.learned=true the ppo arms play the planter beside the trained Emrakul"
                )
        if policy_values.get("encoder", PolicyConfig.encoder) == "flat" and "max_slots" not in policy_values:
            policy_values = {**policy_values, "max_slots": slot_count(run)}  # the flat encoder's fixed S
        allowed = {b.name.lower(): b for b in run.blueprints}
        for key, value in scripted.items():
            if value is not None:
                if not isinstance(value, str) or value.lower() not in allowed:
                    raise checks.ConfigError(f"{key}={value!r} must be one of the run's blueprints: {', '.join(allowed)}")
                scripted[key] = allowed[value.lower()]
        settings = cls(run, ppo, _section("policy", PolicyConfig, policy_values), **loop, **scripted, arms=arms)
        played_arms(settings)  # an arm whose blueprint or agent is missing fails here, before compute
        return settings

    def partner(self) -> PlanterPolicy | None:
        """The scripted Tamiyo beside an agent that learns Emrakul's heads only, else None."""
        return PlanterPolicy(self.planter) if self.policy.role == "emrakul" else None

    def to_dict(self) -> dict[str, Any]:
        """The nested values `build` takes back (what a manifest or a report shows)."""
        return {
            **dataclasses.asdict(self.run),
            "ppo": dataclasses.asdict(self.ppo),
            "policy": dataclasses.asdict(self.policy),
            **{k: getattr(self, k) for k in LOOP_KEYS},
            **{k: None if getattr(self, k) is None else getattr(self, k).name.lower() for k in BLUEPRINT_KEYS},
            ARMS_KEY: None if self.arms is None else list(self.arms),
        }


def played_arms(settings: Settings) -> tuple[str, ...]:
    """The arms these settings evaluate: the ones they name (`arms`), else the default arms, the
    oracle only when they name its blueprint. Raises, naming the arm, when one cannot play."""
    if settings.arms is None:
        return tuple(a for a in DEFAULT_ARMS if a != "oracle" or settings.oracle is not None)
    for arm in settings.arms:
        check_arm(arm, settings)
    return settings.arms


def check_arm(arm: str, settings: Settings) -> None:
    """Raise, naming the arm, when it is unknown or the settings lack the blueprint it plays."""
    if arm not in ARMS:
        raise ValueError(f"arms: {arm!r} is not one of: {', '.join(ARMS)}")
    if arm == "oracle" and settings.oracle is None:
        raise ValueError("arms: 'oracle' needs settings that name its blueprint (oracle = ...)")
    if arm.startswith("planter") and settings.planter is None:
        raise ValueError(f"arms: {arm!r} needs settings that name the blueprint to plant (planter = ...)")
    if arm == SCHEDULE_ARM and settings.rounds < 1:
        raise ValueError(f"arms: {SCHEDULE_ARM!r} searches at the policy's training budget in env steps: it needs rounds >= 1")


def auto_workers(envs: int) -> int:
    """Env worker processes that put every core to work: one per core, at most one per env; none
    (the envs step in this process) when there is one core or one env. Workers compute exactly
    what in-process envs compute, so this changes speed, never results."""
    n = min(envs, cores())
    return n if n >= 2 else 0


def _arms(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not checks.items(ARMS_KEY, value) or not all(isinstance(a, str) for a in value):
        raise checks.ConfigError(f"arms={value!r} must be a non-empty list of arm names")
    for arm in value:  # an unknown name first, before any rule about what the arms would train
        checks.choice("arms", arm, ARMS)
    return tuple(value)


def _section(name: str, cls: type, values: dict):
    try:
        return cls(**values)
    except ValueError as error:  # the dataclass names the field; say which section it belongs to
        message = str(error)
        raise checks.ConfigError(message if message.startswith(f"{name}.") else f"{name}.{message}") from None


def parse_value(text: str) -> Any:
    """A TOML literal (number, bool, list, inline table, quoted string), else the text itself."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`["ppo.lr=1e-3", "batch_size=32"]` -> `{"ppo": {"lr": 0.001}, "batch_size": 32}`."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise checks.ConfigError(f"--set {item!r} must look like KEY=VALUE (e.g. economy.rent_weight=0.5)")
        *sections, name = key.strip().split(".")
        if len(sections) > 1 or (sections and sections[0] not in SECTIONS):
            raise checks.ConfigError(f"--set key {key!r}: a dotted key starts with one of {', '.join(SECTIONS)}")
        target = values.setdefault(sections[0], {}) if sections else values
        target[name] = parse_value(text.strip())
    return values


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; the section tables (`economy`, `decay`, `ppo`, `policy`) merge key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = {**out.get(key, {}), **checks.table(key, value)} if key in SECTIONS else value
    return out
