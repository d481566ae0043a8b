"""Encoders: an `Observation` -> (pooled vector [B, H], slot embeddings [B, S, H]).

Both encoders build per-slot tokens the same way (`SlotTokens`) and hand the same two tensors to
the same heads and critic, so an A/B swaps only how slots are combined:

- `FlatEncoder` concatenates every slot's features into one vector and runs an MLP (the
  baseline of seed 001 §5). Its input width grows with S, so S is fixed per policy.
- `SlotTransformer` (seed 000 Phase 3) runs masked self-attention over the slot tokens plus
  one global token, and pools; it takes any S and learns slot-slot interactions.

Neither loops over slots in Python.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esper_lab.policy.features import GLOBAL_FIELDS, ID_VOCAB, SLOT_FIELDS, SLOT_ID_FIELDS, Observation

ID_DIM = 8  # width of each categorical id embedding: 14 blueprints fit comfortably in 8 dims
STATE_IDS = ("stage", "blueprint", "blend", "slot_kind")  # concatenated into the slot MLP's input
_DEPTH = SLOT_FIELDS.index("depth_norm")
_SITE, _ROLE = SLOT_ID_FIELDS.index("site"), SLOT_ID_FIELDS.index("role")
_STATE = [SLOT_ID_FIELDS.index(name) for name in STATE_IDS]


def mlp(width_in: int, hidden: int, layers: int) -> nn.Sequential:
    """`layers` Linear+ReLU layers from width_in to hidden."""
    parts: list[nn.Module] = []
    for i in range(layers):
        parts += [nn.Linear(width_in if i == 0 else hidden, hidden), nn.ReLU()]
    return nn.Sequential(*parts)


class SlotTokens(nn.Module):
    """Per-slot token: MLP(features ++ stage/blueprint/blend/kind embeddings) plus learned site, role
    and depth encodings (the positional part: where on the host the slot sits)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.ids = nn.ModuleList(nn.Embedding(ID_VOCAB[name], ID_DIM) for name in SLOT_ID_FIELDS)
        self.mlp = mlp(len(SLOT_FIELDS) + len(STATE_IDS) * ID_DIM, hidden, 2)
        self.site = nn.Embedding(ID_VOCAB["site"], hidden)
        self.role = nn.Embedding(ID_VOCAB["role"], hidden)
        self.depth = nn.Linear(1, hidden)

    def embed_ids(self, obs: Observation) -> torch.Tensor:
        """All id embeddings side by side: [B, S, K * ID_DIM]."""
        return torch.cat([embed(obs.ids[..., k]) for k, embed in enumerate(self.ids)], dim=-1)

    def forward(self, obs: Observation) -> torch.Tensor:
        state = torch.cat([self.ids[k](obs.ids[..., k]) for k in _STATE], dim=-1)
        token = self.mlp(torch.cat([obs.slots, state], dim=-1))
        return token + self.site(obs.ids[..., _SITE]) + self.role(obs.ids[..., _ROLE]) + self.depth(obs.slots[..., _DEPTH : _DEPTH + 1])


class FlatEncoder(nn.Module):
    """globals ++ every slot's features and id embeddings ++ slot_mask -> MLP."""

    def __init__(self, hidden: int, layers: int, max_slots: int):
        super().__init__()
        self.max_slots = max_slots
        self.tokens = SlotTokens(hidden)
        per_slot = len(SLOT_FIELDS) + len(SLOT_ID_FIELDS) * ID_DIM + 1
        self.mlp = mlp(len(GLOBAL_FIELDS) + max_slots * per_slot, hidden, layers)

    def forward(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        if obs.n_slots != self.max_slots:
            raise ValueError(f"flat encoder built for {self.max_slots} slots got {obs.n_slots}")
        mask = obs.slot_mask[..., None].float()
        per_slot = torch.cat([obs.slots, self.tokens.embed_ids(obs), torch.ones_like(mask)], dim=-1) * mask
        pooled = self.mlp(torch.cat([obs.globals, per_slot.flatten(1)], dim=-1))
        return pooled, self.tokens(obs)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block; `allowed [B, 1, 1, N]` says which tokens may be attended to."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} must be a multiple of attention heads={heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.out = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.out(attended.transpose(1, 2).reshape(b, n, h))
        return x + self.ff(self.norm2(x))


class SlotTransformer(nn.Module):
    """Slot tokens and one global token -> masked attention layers -> (pooled, slot embeddings).

    The pooled vector joins the global token's output with the mean over real slots."""

    def __init__(self, hidden: int, layers: int, heads: int):
        super().__init__()
        self.tokens = SlotTokens(hidden)
        self.global_token = mlp(len(GLOBAL_FIELDS), hidden, 2)
        self.blocks = nn.ModuleList(AttentionBlock(hidden, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.pool = mlp(2 * hidden, hidden, 1)

    def forward(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.global_token(obs.globals)[:, None], self.tokens(obs)], dim=1)
        valid = torch.cat([torch.ones_like(obs.slot_mask[:, :1]), obs.slot_mask], dim=1)
        for block in self.blocks:
            x = block(x, valid[:, None, None, :])
        x = self.norm(x)
        slots, real = x[:, 1:], obs.slot_mask[..., None].float()
        mean = (slots * real).sum(1) / real.sum(1).clamp(min=1)
        return self.pool(torch.cat([x[:, 0], mean], dim=-1)), slots
