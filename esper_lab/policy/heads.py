"""Factored, masked action heads (seed 001 §4, seed 003 §6), sampled autoregressively.

Two head sets (seed 003 §9.1, the Tamiyo/Emrakul split). Tamiyo's causal order: op -> slot ->
blueprint -> (blend, curve, tempo, target). Each head's mask comes from the plane's masks given
the choices before it (op: legal anywhere; slot: legal for that op; blueprint: fits that slot),
so an illegal combination is never sampled. Emrakul's: decay (HOLD or SEDATE, SEDATE only when a
phage may be sedated) -> phage (among those). A head the choice before it does not use is still
computed, but its choice is replaced by `Action`'s default and it adds nothing to the
log-probability or the entropy: PPO credits only the decisions that changed the world.

A policy's `role` says which sets it learns (`ROLES`); the other set's choices are scripted:
given by a partner policy (a scripted Tamiyo beside a learned Emrakul), or the defaults (WAIT,
HOLD). They count as unused, so the learner is credited with its own decisions only.

One code path serves sampling (choices drawn from Gumbel noise, or argmax when greedy) and the
PPO update (choices given), so both see exactly the same distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from esper_lab.contracts import (
    EMRAKUL_HEADS,
    HEADS,
    TAMIYO_HEADS,
    Action,
    AlphaCurve,
    AlphaTarget,
    BlendAlgorithm,
    Blueprint,
    Decay,
    Op,
    Tempo,
    heads_used,
)
from esper_lab.policy.features import Observation

STYLE_HEADS = ("blend", "curve", "tempo", "target")
CHOICES = {"op": Op, "blueprint": Blueprint, "blend": BlendAlgorithm, "curve": AlphaCurve, "tempo": Tempo, "target": AlphaTarget, "decay": Decay}
SLOT_HEADS = ("slot", "phage")  # heads that choose among the plane's slots
ROLES = {"tamiyo": TAMIYO_HEADS, "emrakul": EMRAKUL_HEADS, "both": HEADS}  # the head sets a policy learns
_DEFAULT_ACTION = Action(Op.WAIT)  # what an unused head's field holds: Action's own defaults
DEFAULTS = {h: int(getattr(_DEFAULT_ACTION, h)) for h in HEADS}
MASKED_LOGIT = torch.finfo(torch.float32).min  # finite, so p = 0 exactly and 0 * logp = 0, never NaN
GUMBEL_EPS = 1e-10  # keeps the Gumbel transform of a uniform draw finite at 0 and 1
HEAD_INIT_GAIN = 0.01  # last layers start near zero: near-uniform first policy (Andrychowicz et al. 2021)


_USED = torch.tensor([[h in heads_used(op) for h in TAMIYO_HEADS] for op in Op])  # [n_ops, n_tamiyo_heads]


def used_by(op: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which of Tamiyo's heads each op in op [B] uses (`contracts.heads_used`), as [B] masks."""
    used = _USED[op]
    return {h: used[:, k] for k, h in enumerate(TAMIYO_HEADS)}


def noise_sizes(n_slots: int) -> dict[str, int]:
    """Uniform draws each head needs per environment (one per choice, for Gumbel-max)."""
    return {h: n_slots if h in SLOT_HEADS else len(CHOICES[h]) for h in HEADS}


@dataclass(frozen=True)
class Decision:
    """Per-head choices, log-probs and entropies ([B] each, zero where unused) and masks ([B, n])."""

    choice: dict[str, torch.Tensor]
    logp: dict[str, torch.Tensor]
    entropy: dict[str, torch.Tensor]
    used: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]

    @property
    def total_logp(self) -> torch.Tensor:
        return torch.stack([self.logp[h] for h in HEADS]).sum(0)

    def actions(self) -> list[Action]:
        columns = [self.choice[h].tolist() for h in HEADS]  # `Action`'s fields, in order
        return [Action(*values) for values in zip(*columns)]


def _mlp(hidden: int, out: int) -> nn.Sequential:
    last = nn.Linear(hidden, out)
    with torch.no_grad():
        last.weight.mul_(HEAD_INIT_GAIN)
        last.bias.zero_()
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), last)


class FactoredHeads(nn.Module):
    """Both head sets over a pooled vector [B, H] and slot embeddings [B, S, H]; `role` (a key of
    `ROLES`) says which it learns, and only those have weights.

    A slot-choosing head (slot, phage) is one shared MLP applied to every slot embedding (plus the
    embedding of the choice that asked for a slot), so it works for any S without a loop over
    slots. Later heads read the chosen slot's embedding and embeddings of the earlier choices:
    that is the autoregressive conditioning.
    """

    def __init__(self, hidden: int, role: str = "tamiyo"):
        super().__init__()
        self.learns = ROLES[role]
        if "op" in self.learns:
            self.op = _mlp(hidden, len(Op))
            self.op_embed = nn.Embedding(len(Op), hidden)
            self.slot = _mlp(hidden, 1)
            self.blueprint = _mlp(hidden, len(Blueprint))
            self.blueprint_embed = nn.Embedding(len(Blueprint), hidden)
            self.style = nn.ModuleDict({h: _mlp(hidden, len(CHOICES[h])) for h in STYLE_HEADS})
        if "decay" in self.learns:
            self.decay = _mlp(hidden, len(Decay))
            self.decay_embed = nn.Embedding(len(Decay), hidden)
            self.phage = _mlp(hidden, 1)

    def forward(
        self,
        pooled: torch.Tensor,
        slot_emb: torch.Tensor,
        obs: Observation,
        given: dict[str, torch.Tensor] | None = None,
        noise: dict[str, torch.Tensor] | None = None,
    ) -> Decision:
        """Choose (or score the `given` choices); `noise` holds uniforms per head, None = argmax.
        `given` may hold only the scripted set's choices (a partner's), to sample the rest."""
        out = Decision({}, {}, {}, {}, {})
        for heads, learn in ((TAMIYO_HEADS, self._tamiyo), (EMRAKUL_HEADS, self._emrakul)):
            if heads[0] in self.learns:
                learn(out, pooled, slot_emb, obs, given, noise)
            else:
                _script(out, heads, obs.n_slots, pooled.shape[0], given)
        return out

    def _tamiyo(self, out: Decision, pooled, slot_emb, obs: Observation, given, noise) -> None:
        rows = torch.arange(pooled.shape[0])
        op = self._choose(out, "op", self.op(pooled), obs.op_mask.any(1), None, given, noise)
        used = used_by(op)
        op_e = self.op_embed(op)
        slot_logits = self.slot(slot_emb + op_e[:, None]).squeeze(-1)
        slot_mask = obs.op_mask[rows, :, op]  # [B, S]: slots where this op is legal
        slot = self._choose(out, "slot", slot_logits, slot_mask, used["slot"], given, noise)
        context = pooled + slot_emb[rows, slot] + op_e
        bp_mask = obs.blueprint_mask[rows, slot]
        blueprint = self._choose(out, "blueprint", self.blueprint(context), bp_mask, used["blueprint"], given, noise)
        context = context + self.blueprint_embed(blueprint) * used["blueprint"][:, None]
        for h in STYLE_HEADS:
            logits = self.style[h](context)
            self._choose(out, h, logits, torch.ones_like(logits, dtype=torch.bool), used[h], given, noise)

    def _emrakul(self, out: Decision, pooled, slot_emb, obs: Observation, given, noise) -> None:
        can = obs.phage_mask.any(1)  # [B]: a choice only where some phage may be sedated
        decay_mask = torch.ones(pooled.shape[0], len(Decay), dtype=torch.bool)
        decay_mask[:, Decay.SEDATE] = can
        decay = self._choose(out, "decay", self.decay(pooled), decay_mask, can, given, noise)
        sedate = decay == Decay.SEDATE
        phage_logits = self.phage(slot_emb + self.decay_embed(decay)[:, None]).squeeze(-1)
        self._choose(out, "phage", phage_logits, obs.phage_mask, sedate, given, noise)

    @staticmethod
    def _choose(out: Decision, head: str, logits, mask, used, given, noise) -> torch.Tensor:
        if used is None:
            used = torch.ones(logits.shape[0], dtype=torch.bool)
        mask = mask | ~used[:, None]  # an unused head is scored under no mask and then ignored
        logp_all = torch.log_softmax(logits.masked_fill(~mask, MASKED_LOGIT), dim=-1)
        if given is not None and head in given:
            choice = given[head]
        else:
            score = logp_all if noise is None else logp_all - torch.log(-torch.log(noise[head].clamp(GUMBEL_EPS, 1 - GUMBEL_EPS)))
            choice = torch.where(used, score.argmax(-1), DEFAULTS[head])
        weight = used.to(logp_all.dtype)
        out.choice[head] = choice
        out.logp[head] = logp_all.gather(-1, choice[:, None]).squeeze(-1) * weight
        out.entropy[head] = -(logp_all.exp() * logp_all).sum(-1) * weight
        out.used[head] = used
        out.mask[head] = mask
        return choice


def _script(out: Decision, heads: tuple[str, ...], n_slots: int, batch: int, given) -> None:
    """Heads this policy does not learn: the partner's choices when `given`, else the defaults;
    unused, so they add nothing to the log-prob or the entropy."""
    zeros = torch.zeros(batch)
    for h in heads:
        out.choice[h] = given[h] if given is not None and h in given else torch.full((batch,), DEFAULTS[h], dtype=torch.long)
        out.logp[h], out.entropy[h] = zeros, zeros
        out.used[h] = torch.zeros(batch, dtype=torch.bool)
        out.mask[h] = torch.ones(batch, n_slots if h in SLOT_HEADS else len(CHOICES[h]), dtype=torch.bool)
