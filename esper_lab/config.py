"""Run configuration: named task presets and one frozen, validated config.

Everything is checked in `__post_init__`, before any data is loaded or any tensor is made, and
every error names the field and what it allows. Enum-valued fields also accept their names as
strings (as they arrive from JSON, TOML or papermill parameters).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from esper_lab import checks
from esper_lab.contracts import Blueprint, HostKind, SurfaceDensity
from esper_lab.data import SEED_LIMIT, check_cifar10_folder
from esper_lab.hosts import CNNConfig, TransformerConfig
from esper_lab.seeds import BLUEPRINTS

CNN_MODULE_SEEDS = (
    Blueprint.NOOP,
    Blueprint.NORM,
    Blueprint.DEPTHWISE,
    Blueprint.CONV_LIGHT,
    Blueprint.CONV_HEAVY,
    Blueprint.ATTENTION,
)
# a task offers every ladder its host fits (seed 002), after its module seeds
LADDERS = {kind: tuple(b for b in Blueprint if b.is_ladder and kind in BLUEPRINTS[b].host_kinds) for kind in HostKind}
TRANSFORMER_MODULE_SEEDS = (
    Blueprint.NOOP,
    Blueprint.NORM,
    Blueprint.LORA,
    Blueprint.LORA_LARGE,
    Blueprint.MLP,
    Blueprint.ATTENTION,
)


@dataclass(frozen=True)
class Task:
    """What a task name stands for: the host, its data and how its metric is read."""

    host_kind: HostKind
    data: str  # "digits" | "pydoc" | "cifar10"
    host: MappingProxyType  # host config defaults (widths, n_layer, ...)
    metric: str  # "accuracy" (higher is better) or "loss" (validation cross-entropy, lower is better)
    blueprints: tuple[Blueprint, ...]
    # rows of the validation split read every step (None: all of it); the whole split is read at
    # each episode's end. Digits' 360 images are cheap; CIFAR-10's 10k are not (issue 13: the
    # per-step read should cost <= 10% of a step); the char LM reads 64 windows of 32 characters.
    val_samples: int | None


TASKS: dict[str, Task] = {
    "digits_cnn": Task(HostKind.CNN, "digits", MappingProxyType({"widths": (8, 16)}), "accuracy", CNN_MODULE_SEEDS + LADDERS[HostKind.CNN], None),
    # seed 000's A0: the same data on a deeper host, so more (coarse) surfaces
    "digits_cnn_deep": Task(
        HostKind.CNN, "digits", MappingProxyType({"widths": (8, 8, 16, 16)}), "accuracy", CNN_MODULE_SEEDS + LADDERS[HostKind.CNN], None
    ),
    "pydoc_lm": Task(
        HostKind.TRANSFORMER,
        "pydoc",
        MappingProxyType({"n_layer": 2, "d_model": 32, "n_head": 2, "context": 32}),
        "loss",
        TRANSFORMER_MODULE_SEEDS + LADDERS[HostKind.TRANSFORMER],
        64,
    ),
    "cifar10_cnn": Task(
        HostKind.CNN,
        "cifar10",
        MappingProxyType({"in_channels": 3, "image_size": 32, "widths": (16, 32, 64), "channels_last": True}),
        "accuracy",
        CNN_MODULE_SEEDS + LADDERS[HostKind.CNN],
        1024,
    ),
}


def _enum(cls: type[enum.Enum], value: Any, name: str) -> enum.Enum:
    if isinstance(value, cls):
        return value
    try:
        return cls[value.upper()] if isinstance(value, str) else cls(value)
    except (KeyError, ValueError, TypeError):
        allowed = ", ".join(m.name.lower() for m in cls)
        raise checks.ConfigError(f"{name}={value!r} is not one of: {allowed}") from None


REWARD_SIGNALS = ("metric_gain", "contribution", "gain_over_static")


@dataclass(frozen=True)
class EconomyConfig:
    """Reward weights (seed 003 §5.1: R = R_task - W_rent*C_rent - W_churn*C_churn - costs).

    `reward_signal` says what R_task pays for:
    - `metric_gain`: the step's change in the task metric (the host's own learning included, so
      mostly noise about the seeds);
    - `contribution`: the summed counterfactual contribution of the seeds in the forward path at
      this step (income every step, against rent every step); it measures how much the host leans
      on a seed, which is not how much better off it is: a host co-adapts to what it is given;
    - `gain_over_static`: the step's change in (metric minus the metric of the static twin, the
      same host trained on the same batches without seeds; `esper_lab.twin`): over an episode it
      pays exactly the final gain over the static host, the quantity the held-out gates judge."""

    task_scale: float = 100.0  # R_task per unit of metric: accuracy points, or 1/100 nat
    reward_signal: str = "metric_gain"
    rent_weight: float = 0.05  # a conv_heavy as big as the host (C_rent ~ log 2) costs ~0.035/step
    churn_weight: float = 0.5
    internal_op_cost: float = 0.02  # per GROW/SHRINK (seed 002 S2: small per-op anti-thrash cost)
    churn_window: int = 10  # steps over which edits and level changes are counted
    max_rent: float = 1.0  # C_rent cap (seed 003 §5.1 "max_rent"): seeds worth ~1.7x the host pay no more

    def __post_init__(self):
        for name in ("task_scale", "rent_weight", "churn_weight", "internal_op_cost", "max_rent"):
            checks.number(f"economy.{name}", getattr(self, name), low=0)
        checks.integer("economy.churn_window", self.churn_window, low=1)
        checks.choice("economy.reward_signal", self.reward_signal, REWARD_SIGNALS)


@dataclass(frozen=True)
class DecayConfig:
    """Emrakul's rules (seed 003 §9, seed 004 Stage 2; `esper_lab.decay`), off unless `enabled`.

    Debt is in reward units (rent paid minus `task_scale` x contribution, summed over the steps
    a phage is in custody); metric drops are in the task metric's units, signed so a drop hurts."""

    enabled: bool = False
    # probes ordered by a learned head set (seed 003 §9.1's Tamiyo/Emrakul split) instead of the
    # debt rule; the policy that trains it is the one that plays (`policy.heads.ROLES`)
    learned: bool = False
    debt_threshold: float = 1.0  # probe a phage once it owes this much: ~5 steps of an unpaid host-sized conv_heavy at rent 0.3
    probe_steps: int = 2  # steps the sedation mask takes to fade a phage to 0 while the host trains (it can re-route)
    settle_steps: int = 2  # steps a probed phage stays gated before its probe is judged on their mean metric
    baseline_steps: int = 3  # steps before a probe whose mean metric is its baseline
    # a probe hurt when the gated mean metric falls more than this below the baseline: 1 point of
    # accuracy, about the step-to-step spread of a trained digits host on its validation split
    harm_tolerance: float = 0.01
    lock_steps: int = 10  # criticality lock after a probe that hurt: no probe of that phage for this long
    # steps after a judgement in which the metric must be back within `harm_tolerance` of the
    # baseline, or the probe left a lasting spike; a probe starts only with room to watch them
    watch_steps: int = 5

    def __post_init__(self):
        for name in ("enabled", "learned"):
            checks.flag(f"decay.{name}", getattr(self, name))
        if self.learned and not self.enabled:
            raise checks.ConfigError("decay.learned=true needs decay.enabled=true (a learned Emrakul is still Emrakul)")
        for name in ("debt_threshold", "harm_tolerance"):
            checks.number(f"decay.{name}", getattr(self, name), low=0)
        for name in ("probe_steps", "settle_steps", "baseline_steps", "lock_steps", "watch_steps"):
            checks.integer(f"decay.{name}", getattr(self, name), low=1)


@dataclass(frozen=True)
class RunConfig:
    """One environment's run: task, organism, budgets, optimisation and episode shape."""

    task: str = "digits_cnn"
    density: SurfaceDensity = SurfaceDensity.A0
    blueprints: tuple[Blueprint, ...] | None = None  # None = every blueprint the task offers
    host: dict = field(default_factory=dict)  # overrides of the task's host config
    seed: int = 0
    episode_length: int = 20  # env steps (= host epochs) per episode; seed 003 uses 150
    batches_per_step: int | None = None  # None = a full pass over the training split
    batch_size: int = 64
    lr: float = 3e-3  # Adam, for host and seeds alike
    param_budget: float = 1.5  # seeds may hold at most this many x the host's parameters
    max_seeds: int = 4  # occupied slots at once
    data_fraction: float = 1.0  # share of the training split used (smoke presets shrink it)
    val_samples: int | None = None  # validation rows read every step; None: the task's default
    # env steps between counterfactual contribution probes (0: never). A probe costs one read of
    # the validation subsample per in-forward seed; every 4th step (and the last) keeps that at a
    # few percent of a digits_cnn episode (see the README's benchmark table)
    contribution_every: int = 4
    # env steps between reads of the whole test split (0: only at the episode's last step); the
    # reports' area under the test curve is the mean over these reads (digits: 360 images, cheap)
    test_every: int = 4
    cifar_folder: str | None = None
    device: str = "cpu"  # where host, seeds and data live: "cpu", "cuda" or "cuda:N"
    economy: EconomyConfig = field(default_factory=EconomyConfig)
    decay: DecayConfig = field(default_factory=DecayConfig)

    def __post_init__(self):
        """Types first, then ranges, then how the fields fit together; nothing is loaded here but
        the CIFAR-10 folder's listing."""
        task = TASKS[checks.choice("task", self.task, tuple(TASKS))]
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("density", _enum(SurfaceDensity, self.density.lower() if isinstance(self.density, str) else self.density, "density"))
        if self.density is SurfaceDensity.A2 and task.host_kind is HostKind.CNN:
            raise checks.ConfigError(f"density='a2' needs a Transformer host; task {self.task!r} has a CNN (allowed: a0, a1)")
        for name, cls in (("economy", EconomyConfig), ("decay", DecayConfig)):
            value = getattr(self, name)
            if not isinstance(value, cls):
                set_(name, cls(**checks.fields(name, value, cls)))
        if self.blueprints is None:
            set_("blueprints", task.blueprints)
        else:
            set_("blueprints", tuple(_enum(Blueprint, b, "blueprints") for b in checks.items("blueprints", self.blueprints)))
            foreign = [b.name.lower() for b in self.blueprints if b not in task.blueprints]
            if foreign:
                allowed = ", ".join(b.name.lower() for b in task.blueprints)
                raise checks.ConfigError(f"blueprints {foreign} do not fit task {self.task!r} (allowed: {allowed})")
            if not self.blueprints:
                raise checks.ConfigError("blueprints=() leaves nothing to germinate; give at least one")
        # JSON turns tuples (e.g. widths) into lists: store tuples, so from_json(to_json(c)) == c
        set_("host", {k: tuple(v) if isinstance(v, list) else v for k, v in checks.table("host", self.host).items()})
        unknown = set(self.host) - set(_host_fields(task.host_kind))
        if unknown:
            raise checks.ConfigError(f"host has unknown keys {sorted(unknown)} (allowed: {', '.join(_host_fields(task.host_kind))})")
        _check_host(task.host_kind, self.host_config())
        for name in ("episode_length", "batch_size", "max_seeds"):
            checks.integer(name, getattr(self, name), low=1)
        for name in ("batches_per_step", "val_samples"):
            if getattr(self, name) is not None:
                checks.integer(name, getattr(self, name), low=1)
        checks.integer("contribution_every", self.contribution_every, low=0)
        checks.integer("test_every", self.test_every, low=0)
        checks.integer("seed", self.seed, low=0, high=SEED_LIMIT - 1)
        checks.number("lr", self.lr, above=0)
        checks.number("param_budget", self.param_budget, above=0)
        checks.number("data_fraction", self.data_fraction, above=0, high=1)
        if self.cifar_folder is not None and not isinstance(self.cifar_folder, str):
            raise checks.ConfigError(f"cifar_folder={self.cifar_folder!r} must be a folder path (a string)")
        set_("device", _device(self.device))
        if task.data == "cifar10":
            check_cifar10_folder(self.cifar_folder)  # None = the default data/cifar-10-batches-py

    @property
    def spec(self) -> Task:
        return TASKS[self.task]

    def host_config(self) -> dict:
        return {**self.spec.host, **self.host, "density": self.density}

    def to_json(self) -> str:
        """Config as JSON (enums by name): what the `runs` table stores and replay reads back."""
        return json.dumps(dataclasses.asdict(self), default=lambda v: v.name.lower() if isinstance(v, enum.Enum) else str(v), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls(**json.loads(text))

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def widened(self, scale: float) -> RunConfig:
        """The same run on a static host `scale` times as wide (every CNN block's width, or the
        Transformer's d_model, rounded to a whole number of heads): a point of the static frontier."""
        host = self.host_config()
        if self.spec.host_kind is HostKind.CNN:
            return self.replace(host={**self.host, "widths": tuple(round(w * scale) for w in host["widths"])})
        heads = host["n_head"]
        return self.replace(host={**self.host, "d_model": heads * round(host["d_model"] * scale / heads)})


def _device(value: Any) -> str:
    """The device's canonical name ("cpu", "cuda:0"), if this machine has it."""
    allowed = "cpu, cuda, cuda:N"
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise checks.ConfigError(f"device={value!r} is not a device (allowed: {allowed})") from None
    if device.type == "cpu":
        return "cpu"
    if device.type != "cuda":
        raise checks.ConfigError(f"device={value!r}: only {allowed} are supported")
    if not torch.cuda.is_available():
        raise checks.ConfigError(f"device={value!r}: this machine has no CUDA device (torch {torch.__version__}); use device='cpu'")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise checks.ConfigError(f"device={value!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return f"cuda:{index}"


def _host_class(kind: HostKind) -> type:
    return CNNConfig if kind is HostKind.CNN else TransformerConfig


def _host_fields(kind: HostKind) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(_host_class(kind)) if f.name not in ("density", "vocab_size"))


def _check_host(kind: HostKind, values: dict) -> None:
    """Build the host's config (a dataclass, no tensors) so a bad width fails here, named `host.*`
    (the vocabulary comes with the data: any size will do for the check)."""
    try:
        _host_class(kind)(**values, **({"vocab_size": 1} if kind is HostKind.TRANSFORMER else {}))
    except ValueError as error:
        raise checks.ConfigError(f"host.{error}") from None
