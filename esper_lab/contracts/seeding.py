"""Random streams and episode seeds (DESIGN rule 7): every random number derives from a few integers,
mixed here and nowhere else (never Python's `hash()`).
"""

from __future__ import annotations

import enum


# --- random streams and episode seeds (DESIGN rule 7) ---------------------------------------------
class Stream(enum.IntEnum):
    """Each random consumer draws from its own stream, derived from (seed, index, stream)."""

    HOST = 1  # host initialisation
    DATA = 2  # training subset and minibatch order
    PLANE = 3  # seed initialisation at germination
    RANDOM_POLICY = 4  # the masked random baseline
    SAMPLING = 5  # the learned policy's action sampling
    POLICY_INIT = 6  # the learned policy's initial weights
    SHUFFLE = 7  # PPO minibatch order
    EPISODE = 8  # training episode seeds
    VALIDATION = 9  # the per-step validation subsample
    EVALUATION = 10  # policies' sampling on held-out evaluation episodes
    AUDIT = 11  # an audit's replicate episodes (host init, data order, seed inits) beyond the recorded one
    SCHEDULE_SEARCH = 12  # the fixed growth schedules a schedule search draws (`experiments.search`)


def stream_seed(seed: int, index: int, stream: Stream) -> int:
    """A distinct, deterministic 62-bit seed per (seed, index, stream) (no `hash()`)."""
    return (seed * 1_000_003 + index * 7_919 + int(stream) * 104_729) % (2**62)


_GOLDEN, _MUL1, _MUL2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's constants
_MASK64 = 2**64 - 1


def _splitmix64(z: int) -> int:
    """splitmix64's finaliser: a 64-bit integer, well spread."""
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
    return z ^ (z >> 31)


def mix64(*values: int) -> int:
    """splitmix64 over a few integers: well-spread 63-bit seeds from small ones (never `hash()`)."""
    z = 0
    for v in values:
        z = _splitmix64((z * _GOLDEN + v * _MUL1 + 0x632BE59BD9B4E019) & _MASK64)
    return z & (2**63 - 1)


def germination_seed(run_seed: int, surface_uid: int, germinations: int) -> int:
    """The 63-bit seed of a germination: a fresh seed module per (run, surface, germination count)."""
    return _splitmix64((run_seed * _GOLDEN + surface_uid * _MUL1 + germinations) & _MASK64) & (2**63 - 1)


# An episode's randomness (host init, data order, seed inits) derives from one episode seed.
# Training episodes draw theirs below EVAL_SEED_BASE; held-out evaluation episodes sit above it,
# so no evaluation episode is ever trained on (seed 004 Stage 1: judge on held-out seeds).
EVAL_SEED_BASE = 2**40
MAX_EVAL_EPISODES = 10_000  # per run seed: eval episode k of run seed s is BASE + s * this + k


def training_episode_seed(run_seed: int, env_index: int, episode: int) -> int:
    """The seed of training episode `episode` in env `env_index` of a run: a new one each episode."""
    return mix64(run_seed, env_index, episode) % EVAL_SEED_BASE


def eval_episode_seed(run_seed: int, k: int) -> int:
    """The seed of held-out evaluation episode k of a run seed (a fixed, documented set)."""
    if not 0 <= k < MAX_EVAL_EPISODES:
        raise ValueError(f"eval episode {k} outside 0..{MAX_EVAL_EPISODES - 1}")
    return EVAL_SEED_BASE + run_seed * MAX_EVAL_EPISODES + k
