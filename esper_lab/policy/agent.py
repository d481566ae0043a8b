"""The learned policy: normaliser + encoder (+ optional LSTM) + factored heads + critic.

`Agent` is the `nn.Module` PPO trains; its `state_dict` holds the running feature normalisation
too. `PPOPolicy` puts it behind the baseline interface `act(results) -> list[Action]`, with one
sampling generator per environment so env i's draws do not depend on the others, and, for an
agent that learns one head set only, the partner policy that plays the other (a scripted Tamiyo
beside a learned Emrakul).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from esper_lab import checks
from esper_lab.contracts import HEADS, Action, Op, StepResult, Stream, stream_seed
from esper_lab.policy.encoders import FlatEncoder, SlotTransformer
from esper_lab.policy.features import GLOBAL_FIELDS, SLOT_FIELDS, Observation, Observer, RunningNorm
from esper_lab.policy.heads import ROLES, Decision, FactoredHeads, noise_sizes

ENCODERS = ("flat", "slot_transformer")
State = tuple[torch.Tensor, torch.Tensor] | None  # LSTM (h, c), each [B, H]; None without memory


@dataclass(frozen=True)
class PolicyConfig:
    encoder: str = "flat"  # "flat" | "slot_transformer"
    hidden: int = 64  # tiny observations (~30 features a slot): 64 is ample and fast on 2 cores
    layers: int = 2  # MLP layers (flat) or attention blocks (slot transformer)
    attention_heads: int = 4  # 16 dims per head at hidden 64
    max_slots: int | None = None  # the flat encoder's fixed S; the slot transformer takes any S
    recurrent: bool = False  # an LSTM cell over the pooled vector, state reset at episode start
    # The ops this policy may choose, by name (WAIT always); empty: every op the plane allows. Part
    # of the policy, so training and evaluation play the same action set (e.g. a growth-only
    # Tamiyo: germinate and advance; pruning and decay belong to later stages, seed 004).
    ops: tuple[str, ...] = ()
    # the head sets it learns (`heads.ROLES`): Tamiyo's (grow), Emrakul's (decay) or both. Set
    # from the settings (`decay.learned`, and whether a scripted Tamiyo plays beside it).
    role: str = "tamiyo"

    def __post_init__(self):
        checks.choice("encoder", self.encoder, ENCODERS)
        checks.choice("role", self.role, ROLES)
        for name in ("hidden", "layers", "attention_heads"):
            checks.integer(name, getattr(self, name), low=1)
        checks.flag("recurrent", self.recurrent)
        if self.encoder == "flat" or self.max_slots is not None:
            checks.integer("max_slots", self.max_slots, low=1)
        names = {op.name.lower() for op in Op}
        unknown = [o for o in checks.items("ops", self.ops) if not isinstance(o, str) or o.lower() not in names]
        if unknown:
            raise checks.ConfigError(f"ops={self.ops!r}: give a list of op names ({', '.join(sorted(names))})")
        object.__setattr__(self, "ops", tuple(o.lower() for o in self.ops))

    def op_mask(self) -> torch.Tensor | None:
        """[n_ops] the ops this policy may choose (WAIT always), or None: every op."""
        if not self.ops:
            return None
        return op_mask(self.ops)


def op_mask(names) -> torch.Tensor:
    """[n_ops] True for WAIT and each named op."""
    allowed = torch.zeros(len(Op), dtype=torch.bool)
    allowed[[Op.WAIT, *(Op[name.upper()] for name in names)]] = True
    return allowed


class Agent(nn.Module):
    def __init__(self, config: PolicyConfig, seed: int = 0):
        super().__init__()
        self.config = config
        with torch.random.fork_rng():  # initial weights from the seed alone; global RNG untouched
            torch.manual_seed(stream_seed(seed, 0, Stream.POLICY_INIT))
            hidden = config.hidden
            self.global_norm = RunningNorm(len(GLOBAL_FIELDS))
            self.slot_norm = RunningNorm(len(SLOT_FIELDS))
            if config.encoder == "flat":
                self.encoder: nn.Module = FlatEncoder(hidden, config.layers, config.max_slots)
            else:
                self.encoder = SlotTransformer(hidden, config.layers, config.attention_heads)
            self.memory = nn.LSTMCell(hidden, hidden) if config.recurrent else None
            self.context = nn.Linear(hidden, hidden)  # the pooled vector, broadcast to every slot
            self.heads = FactoredHeads(hidden, config.role)
            self.critic = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    @property
    def max_slots(self) -> int | None:
        return self.config.max_slots if self.config.encoder == "flat" else None

    def normalise(self, obs: Observation, update: bool) -> Observation:
        """Scale globals and real slots' features by the running statistics (updated first when
        `update`: during rollouts; the stored, normalised batch is what the PPO update replays)."""
        if update:
            self.global_norm.update(obs.globals)
            self.slot_norm.update(obs.slots[obs.slot_mask])
        slots = self.slot_norm(obs.slots) * obs.slot_mask[..., None]
        return dataclasses.replace(obs, globals=self.global_norm(obs.globals), slots=slots)

    def initial_state(self, batch: int) -> State:
        if self.memory is None:
            return None
        zeros = torch.zeros(batch, self.config.hidden)
        return zeros, zeros.clone()

    def forward(
        self,
        obs: Observation,
        state: State = None,
        starts: torch.Tensor | None = None,
        given: dict[str, torch.Tensor] | None = None,
        noise: dict[str, torch.Tensor] | None = None,
    ) -> tuple[Decision, torch.Tensor, State]:
        """One step for a batch: (decision, value [B], next state). `starts [B]` zeroes the
        memory of environments whose episode begins at this step."""
        pooled, tokens = self.encoder(obs)
        if self.memory is not None:
            h, c = self.initial_state(pooled.shape[0]) if state is None else state
            if starts is not None:
                keep = (~starts).float()[:, None]
                h, c = h * keep, c * keep
            h, c = self.memory(pooled, (h, c))
            pooled, state = h, (h, c)
        slot_emb = tokens + self.context(pooled)[:, None]
        decision = self.heads(pooled, slot_emb, obs, given, noise)
        return decision, self.critic(pooled).squeeze(-1), state


class PPOPolicy:
    """`act(results) -> list[Action]` for the learned agent: sampled (or argmax when `greedy`),
    masked by the plane, batched over environments in one forward. `partner` (any policy) plays
    the heads the agent does not learn; without one they take their defaults (WAIT, HOLD)."""

    def __init__(self, agent: Agent, seed: int = 0, greedy: bool = False, partner=None):
        self.agent = agent
        self.seed = seed
        self.greedy = greedy
        self.partner = partner
        self.observer = Observer(agent.max_slots)
        self.generators: list[torch.Generator] = []
        self.state: State = None

    def decide(
        self, results: list[StepResult], update_norm: bool = False, ops: torch.Tensor | None = None
    ) -> tuple[Observation, Decision, torch.Tensor]:
        """(normalised observation, decision, value) for one step of every environment. The
        policy's own op set (`PolicyConfig.ops`) and `ops` [n_ops] (a training curriculum) narrow
        the legal ops further; WAIT stays legal."""
        while len(self.generators) < len(results):
            self.generators.append(torch.Generator().manual_seed(stream_seed(self.seed, len(self.generators), Stream.SAMPLING)))
        obs = self.agent.normalise(self.observer(results), update=update_norm)
        for allowed in (self.agent.config.op_mask(), ops):
            if allowed is not None:
                obs = dataclasses.replace(obs, op_mask=obs.op_mask & allowed)
        starts = torch.tensor([r.step == 0 for r in results])
        noise = None if self.greedy else self._noise(len(results), obs.n_slots)
        given = None
        if self.partner is not None:
            actions = self.partner.act(results)
            given = {h: torch.tensor([int(getattr(a, h)) for a in actions]) for h in HEADS if h not in self.agent.heads.learns}
        with torch.no_grad():
            decision, value, self.state = self.agent(obs, self.state, starts, given=given, noise=noise)
        return obs, decision, value

    def act(self, results: list[StepResult]) -> list[Action]:
        return self.decide(results)[1].actions()

    def _noise(self, batch: int, n_slots: int) -> dict[str, torch.Tensor]:
        """Uniforms for the heads the agent learns (a scripted head draws nothing)."""
        heads = self.agent.heads.learns
        sizes = noise_sizes(n_slots)
        draws = torch.stack([torch.rand(sum(sizes[h] for h in heads), generator=g) for g in self.generators[:batch]])
        return dict(zip(heads, draws.split([sizes[h] for h in heads], dim=1)))

    def rng_state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def set_rng_state(self, states: list[torch.Tensor]) -> None:
        self.generators = [torch.Generator() for _ in states]
        for g, s in zip(self.generators, states):
            g.set_state(s)


def decision_record(decision: Decision, value: torch.Tensor, env: int) -> dict:
    """One environment's decision as plain numbers (what a telemetry `decisions` row holds)."""
    record: dict = {}
    record["used"] = [h for h in HEADS if bool(decision.used[h][env])]
    for h in HEADS:
        record[h] = int(decision.choice[h][env])
        record[f"{h}_logp"] = float(decision.logp[h][env])
        record[f"{h}_entropy"] = float(decision.entropy[h][env])
        record[f"{h}_mask"] = decision.mask[h][env].tolist()
    record["value"] = float(value[env])
    record["logp"] = float(decision.total_logp[env])
    return record
