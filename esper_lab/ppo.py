"""PPO (Simic training): rollouts over vectorised environments, GAE, clipped updates, checkpoints.

A round = collect whole episodes from every environment (one batched policy call per step),
then several epochs of minibatch updates. Because a round always ends where every episode ends,
nothing is bootstrapped, recurrent state starts from zero, and a checkpoint taken between rounds
(agent with its normaliser, optimizer, return scale, every generator, the round counter) resumes
exactly as an uninterrupted run would. A real `VecEnv` rebuilds each episode from its seed at
`reset(episode)` (a new one per training episode), so its environments need nothing in the
checkpoint.

`recorder` (duck-typed, optional) receives `record_step(env, episode, action, result, decision)`
per environment per step and `record_update(update, stats)` per round.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from esper_lab import checks
from esper_lab.contracts import HEADS, Op, Stream, stream_seed
from esper_lab.policy.agent import Agent, PolicyConfig, PPOPolicy, decision_record, op_mask
from esper_lab.policy.features import NORM_VAR_FLOOR, Observation, RunningNorm
from esper_lab.policy.heads import Decision

ADAM_EPS = 1e-5  # the PPO implementations' Adam epsilon (Huang et al. 2022, "37 details")
ADVANTAGE_EPS = 1e-8  # guards advantage normalisation against a constant batch
ENTROPY_COEF_RANGE = (1e-4, 1.0)  # an adapted coefficient stays where the policy loss still counts
# 2: the caller's metadata (the run it records into); 3: adapted entropy coefficients; 4: Emrakul's heads; 5: the
# adjacency ops and economy features
CHECKPOINT_VERSION = 6


def _entropy_defaults() -> dict[str, float]:
    # 0.01: the usual PPO entropy bonus (Schulman et al. 2017, Atari); per head, so one that
    # collapses (or one that should stay open) can be tuned alone.
    return {h: 0.01 for h in HEADS}


@dataclass(frozen=True)
class PPOConfig:
    episodes_per_round: int = 1  # whole episodes per round, see the module docstring
    gamma: float = 0.995  # seed 003 §5.2, the online return's discount
    gae_lambda: float = 0.98  # seed 003 §5.2
    clip: float = 0.2  # clipped surrogate range (Schulman et al. 2017)
    epochs: int = 4  # passes over each rollout (Schulman et al. 2017 use 3 to 10)
    # per epoch; split by environment when the agent is recurrent. On the known-answer env 2
    # (~64 decisions each) needed as many rounds as 4, at half the update time.
    minibatches: int = 2
    # Adam step size, measured on the known-answer env (tiny nets, ~130 decisions a round): the
    # PPO paper's 3e-4 took ~3x the rounds; 1e-3 and 2e-3 did alike (~45 rounds to 90% of the
    # optimum over seeds 0-4 x both encoders), so the gentler one.
    lr: float = 1e-3
    value_coef: float = 0.5  # value loss weight (Schulman et al. 2017)
    entropy_coef: dict[str, float] = field(default_factory=_entropy_defaults)
    # Target entropy (nats, over the decisions that used the head) per head: the head's
    # coefficient then adapts after every update, up while it is below target, down above it
    # (the automatic temperature of SAC, Haarnoja et al. 2018), so a head cannot collapse onto
    # one choice before the reward has shown it anything. Empty: fixed coefficients.
    entropy_target: dict[str, float] = field(default_factory=dict)
    entropy_adapt: float = 0.1  # step of log(coefficient) per nat of entropy gap per update
    # A curriculum over the action set (seed 004: "start with a limited action set, then expand"):
    # stages `{rounds = N, ops = ["wait", "germinate", ...]}` in order; during a stage's rounds the
    # learner may choose only those ops (and WAIT), after the last stage every op the plane allows.
    # Evaluation always plays the whole action set.
    curriculum: tuple[dict, ...] = ()
    max_grad_norm: float = 0.5  # global gradient-norm clip (Huang et al. 2022)
    normalise_advantages: bool = True  # per rollout: the policy step size stops depending on reward units
    scale_rewards: bool = True  # divide rewards by the running std of discounted returns: value targets stay O(1)
    seed: int = 0

    def __post_init__(self):
        for name in ("entropy_coef", "entropy_target"):
            values = checks.table(name, getattr(self, name))
            unknown = set(values) - set(HEADS)
            if unknown:
                raise checks.ConfigError(f"{name} has unknown heads {sorted(unknown)} (heads: {', '.join(HEADS)})")
            for head, value in values.items():
                checks.number(f"{name}.{head}", value, low=0)
        object.__setattr__(self, "entropy_coef", {**_entropy_defaults(), **self.entropy_coef})
        names = {o.name.lower(): o for o in Op}
        stages = []
        for stage in checks.items("curriculum", self.curriculum):
            if not (isinstance(stage, dict) and set(stage) == {"rounds", "ops"}):
                raise checks.ConfigError(f"curriculum stage {stage!r} must be {{rounds = N >= 1, ops = [...]}}")
            checks.integer("curriculum.rounds", stage["rounds"], low=1)
            unknown = [o for o in checks.items("curriculum.ops", stage["ops"]) if not isinstance(o, str) or o.lower() not in names]
            if unknown:
                raise checks.ConfigError(f"curriculum ops {unknown} are not ops (ops: {', '.join(names)})")
            stages.append({"rounds": stage["rounds"], "ops": tuple(names[o.lower()].name.lower() for o in stage["ops"])})
        object.__setattr__(self, "curriculum", tuple(stages))
        for name in ("episodes_per_round", "epochs", "minibatches"):
            checks.integer(name, getattr(self, name), low=1)
        for name in ("gamma", "gae_lambda"):
            checks.number(name, getattr(self, name), low=0, high=1)
        for name in ("clip", "lr", "max_grad_norm"):
            checks.number(name, getattr(self, name), above=0)
        for name in ("value_coef", "entropy_adapt"):
            checks.number(name, getattr(self, name), low=0)
        for name in ("normalise_advantages", "scale_rewards"):
            checks.flag(name, getattr(self, name))
        checks.integer("seed", self.seed, low=0)


@dataclass(frozen=True)
class Rollout:
    """One round's experience, [T, B] (or [T, B, ...] for the observation)."""

    obs: Observation  # normalised, as the policy saw it; masks included
    choice: dict[str, torch.Tensor]
    logp: torch.Tensor
    value: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    starts: torch.Tensor
    episode_returns: list[float]


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over [T, B]; `dones[t]` ends the episode after step t.
    Returns (advantages, value targets)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        live = 1.0 - dones[t].float()
        next_value = values[t + 1] if t + 1 < len(rewards) else torch.zeros_like(values[t])
        delta = rewards[t] + gamma * next_value * live - values[t]
        running = delta + gamma * lam * live * running
        advantages[t] = running
    return advantages, advantages + values


class PPOTrainer:
    def __init__(self, env, agent: Agent, config: PPOConfig = PPOConfig(), recorder=None, partner=None):
        """`env` is a `VecEnv` or anything with `reset()`, `step(actions)` and `len()`; `partner`
        plays the heads the agent does not learn (`PPOPolicy`), e.g. a scripted Tamiyo."""
        self.env, self.agent, self.config, self.recorder = env, agent, config, recorder
        self.policy = PPOPolicy(agent, seed=config.seed, partner=partner)
        self.optimizer = torch.optim.Adam(agent.parameters(), lr=config.lr, eps=ADAM_EPS, foreach=True)
        self.shuffle = torch.Generator().manual_seed(stream_seed(config.seed, 0, Stream.SHUFFLE))
        self.return_norm = RunningNorm(1)
        self.entropy_coef = dict(config.entropy_coef)  # adapts toward `entropy_target` when one is set
        self.round = 0
        self.metadata: dict = {}  # what the caller saved beside the training state (e.g. where it records)

    # --- rollouts -----------------------------------------------------------------------------
    def allowed_ops(self) -> torch.Tensor | None:
        """[n_ops] the ops this round's curriculum stage allows (WAIT always), or None: all."""
        end = 0
        for stage in self.config.curriculum:
            end += stage["rounds"]
            if self.round < end:
                return op_mask(stage["ops"])
        return None

    def collect(self, on_step: Callable[[], None] | None = None) -> Rollout:
        steps: list[tuple] = []
        first = self.round * self.config.episodes_per_round  # training episodes so far: each gets new seeds
        results, finished, returns = self.env.reset(first), 0, []
        ops = self.allowed_ops()
        episode_return = torch.zeros(len(results))
        while True:
            obs, decision, value = self.policy.decide(results, update_norm=True, ops=ops)
            actions = decision.actions()
            starts = torch.tensor([r.step == 0 for r in results])
            results = self.env.step(actions)
            reward = torch.tensor([r.reward.total for r in results])
            done = torch.tensor([r.done for r in results])
            steps.append((obs, decision.choice, decision.total_logp, value, reward, done, starts))
            episode_return += reward
            if self.recorder is not None:
                episode = first + finished
                for i, (action, result) in enumerate(zip(actions, results)):
                    self.recorder.record_step(i, episode, action, result, decision_record(decision, value, i))
            if on_step is not None:
                on_step()
            if done.any():
                if not done.all():
                    raise RuntimeError("environments must end their episodes together (equal episode lengths)")
                finished += 1
                returns += episode_return.tolist()
                if finished == self.config.episodes_per_round:
                    break
                results, episode_return = self.env.reset(first + finished), torch.zeros(len(results))
        obs, choices, logp, value, reward, done, starts = zip(*steps)
        return Rollout(
            obs=Observation.stack(list(obs)),
            choice={h: torch.stack([c[h] for c in choices]) for h in HEADS},
            logp=torch.stack(logp),
            value=torch.stack(value),
            reward=torch.stack(reward).float(),
            done=torch.stack(done),
            starts=torch.stack(starts),
            episode_returns=returns,
        )

    def _scaled_rewards(self, rollout: Rollout) -> torch.Tensor:
        if not self.config.scale_rewards:
            return rollout.reward
        running, discounted = torch.zeros_like(rollout.reward[0]), []
        for reward, done in zip(rollout.reward, rollout.done):
            running = running * self.config.gamma + reward
            discounted.append(running)
            running = running * (1.0 - done.float())
        self.return_norm.update(torch.stack(discounted).reshape(-1, 1))
        return rollout.reward / float(self.return_norm.var.clamp(min=NORM_VAR_FLOOR).sqrt())

    # --- the update ---------------------------------------------------------------------------
    def _score(self, rollout: Rollout, obs: Observation, index: torch.Tensor) -> tuple[torch.Tensor, Decision, torch.Tensor]:
        """Re-score stored choices under the current weights: (flat indices into T*B, decision,
        value). `obs` is the rollout's observation flattened to [T*B] for a feed-forward agent,
        which scores samples `index`; a recurrent agent replays whole environments (`index` =
        env ids) in time order from a zero state."""
        n_steps, n_envs = rollout.reward.shape
        if self.agent.memory is None:
            decision, value, _ = self.agent(obs[index], given={h: c.flatten()[index] for h, c in rollout.choice.items()})
            return index, decision, value
        state, decisions, values = None, [], []
        for t in range(n_steps):
            given = {h: c[t, index] for h, c in rollout.choice.items()}
            decision, value, state = self.agent(obs[t][index], state, rollout.starts[t, index], given=given)
            decisions.append(decision)
            values.append(value)
        flat = (torch.arange(n_steps)[:, None] * n_envs + index[None, :]).reshape(-1)
        join = lambda name: {h: torch.cat([getattr(d, name)[h] for d in decisions]) for h in HEADS}
        return flat, Decision(join("choice"), join("logp"), join("entropy"), join("used"), {}), torch.cat(values)

    def update(self, rollout: Rollout) -> dict[str, float]:
        config = self.config
        advantages, targets = gae(self._scaled_rewards(rollout), rollout.value, rollout.done, config.gamma, config.gae_lambda)
        explained = 1.0 - float((targets - rollout.value).var() / targets.var().clamp(min=ADVANTAGE_EPS))
        advantages, targets, old_logp = advantages.flatten(), targets.flatten(), rollout.logp.flatten()
        if config.normalise_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + ADVANTAGE_EPS)
        n_steps, n_envs = rollout.reward.shape
        recurrent = self.agent.memory is not None
        obs = rollout.obs if recurrent else rollout.obs.map(lambda t: t.flatten(0, 1))
        units = n_envs if recurrent else n_steps * n_envs
        n_batches = min(config.minibatches, units)
        sums: dict[str, float] = {}
        entropy = {h: 0.0 for h in HEADS}
        used = {h: 0.0 for h in HEADS}
        for _ in range(config.epochs):
            for index in torch.randperm(units, generator=self.shuffle).chunk(n_batches):
                flat, decision, value = self._score(rollout, obs, index)
                log_ratio = decision.total_logp - old_logp[flat]
                ratio = log_ratio.exp()
                adv = advantages[flat]
                policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - config.clip, 1 + config.clip) * adv).mean()
                value_loss = 0.5 * (value - targets[flat]).square().mean()
                # each head's entropy averaged over the decisions that used it, so a head the op
                # rarely calls (the germination style) is kept as open as the op head itself
                entropy_bonus = sum(self.entropy_coef[h] * decision.entropy[h].sum() / decision.used[h].sum().clamp(min=1) for h in HEADS)
                loss = policy_loss + config.value_coef * value_loss - entropy_bonus
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.agent.parameters(), config.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    batch = {
                        "policy_loss": float(policy_loss),
                        "value_loss": float(value_loss),
                        "entropy_loss": -float(entropy_bonus),
                        "total_loss": float(loss),
                        "entropy": float(sum(decision.entropy[h].mean() for h in HEADS)),
                        "grad_norm": float(grad_norm),
                        "approx_kl": float(((ratio - 1) - log_ratio).mean()),
                        "clip_fraction": float(((ratio - 1).abs() > config.clip).float().mean()),
                    }
                    for h in HEADS:
                        entropy[h] += float(decision.entropy[h].sum())
                        used[h] += float(decision.used[h].sum())
                for key, v in batch.items():
                    sums[key] = sums.get(key, 0.0) + v / (config.epochs * n_batches)
        # per-head entropy: the mean over the decisions where that head was used
        per_head = {h: entropy[h] / max(used[h], 1.0) for h in HEADS}
        for h, target in config.entropy_target.items():
            if used[h]:  # a head no decision used this round says nothing about its entropy
                coef = self.entropy_coef[h] * math.exp(config.entropy_adapt * (target - per_head[h]))
                self.entropy_coef[h] = min(max(coef, ENTROPY_COEF_RANGE[0]), ENTROPY_COEF_RANGE[1])
        return {
            **sums,
            **{f"entropy_{h}": per_head[h] for h in HEADS},
            **{f"entropy_coef_{h}": self.entropy_coef[h] for h in config.entropy_target},
            "explained_variance": explained,
            "lr": config.lr,
        }

    # --- rounds and checkpoints ---------------------------------------------------------------
    def train_round(self, on_step: Callable[[], None] | None = None) -> dict[str, float]:
        """Collect one round, update on it, report it; returns the update's stats."""
        started = time.perf_counter()
        rollout = self.collect(on_step)
        collected = time.perf_counter()
        stats = self.update(rollout)
        returns = torch.tensor(rollout.episode_returns)
        stats.update(
            round=float(self.round),
            return_mean=float(returns.mean()),
            return_min=float(returns.min()),
            return_max=float(returns.max()),
            env_steps=float(rollout.reward.numel()),
            rollout_seconds=collected - started,
            update_seconds=time.perf_counter() - collected,
        )
        if self.recorder is not None:
            self.recorder.record_update(self.round, stats)
        self.round += 1
        return stats

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        """Write the whole training state (and the caller's `metadata`, plain values) atomically:
        a temp file, fsync, then `os.replace`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": CHECKPOINT_VERSION,
            "round": self.round,
            "policy_config": asdict(self.agent.config),
            "ppo_config": asdict(self.config),
            "agent": self.agent.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "return_norm": self.return_norm.state_dict(),
            "sampling_rng": self.policy.rng_state(),
            "shuffle_rng": self.shuffle.get_state(),
            "entropy_coef": self.entropy_coef,
            "metadata": metadata or {},
        }
        temp = path.with_name(path.name + ".tmp")
        with open(temp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)

    @classmethod
    def resume(cls, path: str | Path, env, recorder=None, partner=None) -> PPOTrainer:
        """A trainer that continues from checkpoint `path` as if it had never stopped."""
        payload = torch.load(path, weights_only=True)
        if payload.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint {path} has version {payload.get('version')}, expected {CHECKPOINT_VERSION}")
        agent = Agent(PolicyConfig(**payload["policy_config"]))
        agent.load_state_dict(payload["agent"])
        trainer = cls(env, agent, PPOConfig(**payload["ppo_config"]), recorder, partner)
        trainer.optimizer.load_state_dict(payload["optimizer"])
        trainer.return_norm.load_state_dict(payload["return_norm"])
        trainer.policy.set_rng_state(payload["sampling_rng"])
        trainer.shuffle.set_state(payload["shuffle_rng"])
        trainer.round = payload["round"]
        trainer.entropy_coef = payload["entropy_coef"]
        trainer.metadata = payload["metadata"]
        return trainer
