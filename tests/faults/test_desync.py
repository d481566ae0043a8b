"""Desync modes with two real gloo processes: each stops both ranks with a `DesyncError` naming
the rank, the slot and the field, before the ranks' collectives could disagree. And a NaN only
one rank sees is blamed on the same seed by both, so the planes stay in sync. Leaving the
process group leaves no gloo thread behind."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import esper_lab.distributed as distributed
from esper_lab.config import RunConfig
from esper_lab.contracts import Action, BlendAlgorithm, Blueprint, Op, Stage
from esper_lab.distributed import HOST_CHECK_EVERY, DesyncError, process_group, run
from esper_lab.env import MorphEnv

CONFIG = RunConfig(task="digits_cnn", episode_length=8, batches_per_step=2, data_fraction=0.25)
COLLECTIVE_TIMEOUT = timedelta(seconds=60)  # a rank stuck in a mismatched collective fails the test, not hangs it
HOST_WEIGHT = "blocks.0.conv1.weight"
PERTURBED_AT = 2  # the step after which rank 1 is made to differ
LIFECYCLE = [Action(Op.GERMINATE, 0, Blueprint.CONV_LIGHT), Action(Op.ADVANCE, 0), Action(Op.ADVANCE, 0)]
SCRIPT = LIFECYCLE + [Action(Op.WAIT)] * (CONFIG.episode_length - len(LIFECYCLE))
MODES = ("host", "blend", "action", "nan_on_one_rank")


class _WaitsInsteadOfAdvance(MorphEnv):
    """Rank 1's bug: it applies WAIT where rank 0 applies ADVANCE (GERMINATED -> TRAINING)."""

    def step(self, action):
        return super().step(Action(Op.WAIT) if action.op is Op.ADVANCE and self.step_count + 1 == PERTURBED_AT else action)


def _differ(mode: str, step: int, env: MorphEnv) -> None:
    """Rank 1's side of a desync `mode`, after `step` (the action mode lives in the env class)."""
    if mode == "host" and step == PERTURBED_AT:
        with torch.no_grad():
            env.host.get_parameter(HOST_WEIGHT).add_(1e-3)
    elif mode == "blend" and step == len(LIFECYCLE):  # the seed is BLENDING from here on
        env.plane.slots[0].blend_algorithm = BlendAlgorithm.MULTIPLY
    elif mode == "nan_on_one_rank" and step == len(LIFECYCLE):  # only rank 1's seed outputs NaN
        env.plane.slots[0].seed.register_forward_hook(lambda module, inputs, output: output * float("nan"))


def _play(rank: int, rendezvous: str, mode: str) -> tuple:
    """One episode in its own process group, with rank 1 made to differ as `mode` says."""
    script, stages = list(SCRIPT), []

    def before_check(step: int, env: MorphEnv) -> None:
        if rank == 1:
            _differ(mode, step, env)
        stages.append(env.plane.slots[0].stage.name)

    distributed.MorphEnv = _WaitsInsteadOfAdvance if mode == "action" and rank == 1 else MorphEnv
    try:
        with process_group("gloo", init_method=rendezvous, rank=rank, world_size=2, timeout=COLLECTIVE_TIMEOUT):
            run(CONFIG, lambda result: script.pop(0), len(SCRIPT), before_check=before_check)
        return ("ok", stages)
    except DesyncError as error:
        return ("desync", str(error))
    except Exception as error:  # noqa: BLE001 - reported by the mode's test; the other modes still run
        return ("error", repr(error))


def _gloo_threads() -> int:
    """Live threads of gloo in this process (Linux names them pt_gloo_runloop, gloo_tcp_loop)."""
    return sum("gloo" in Path(f"/proc/self/task/{tid}/comm").read_text() for tid in os.listdir("/proc/self/task"))


def _worker(rank: int, folder: str, results: dict) -> None:
    torch.set_num_threads(1)
    for mode in MODES:  # one launch for every mode: starting two processes costs more than playing
        results[(mode, rank)] = (*_play(rank, f"file://{folder}/{mode}", mode), _gloo_threads())


@pytest.fixture(scope="module")
def played(tmp_path_factory) -> dict:
    """mode -> (rank 0's result, rank 1's result)."""
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path_factory.mktemp("rendezvous")), results), nprocs=2, join=True)
    return {mode: (results[(mode, 0)], results[(mode, 1)]) for mode in MODES}


def _stopped(results: tuple) -> str:
    """Both ranks raised the same DesyncError; its message."""
    assert results[0][0] == results[1][0] == "desync", results
    assert results[0][1] == results[1][1]
    return results[0][1]


@pytest.mark.slow
def test_a_host_weight_perturbed_on_one_rank_is_named_within_the_host_check_interval(played):
    message = _stopped(played["host"])
    caught_at = (PERTURBED_AT // HOST_CHECK_EVERY + 1) * HOST_CHECK_EVERY
    assert f"step {caught_at}: rank 1 host (no slot) field {HOST_WEIGHT}" in message


def test_a_blend_algorithm_flipped_on_one_rank_is_named(played):
    message = _stopped(played["blend"])
    assert f"step {len(LIFECYCLE)}: rank 1 slot 0" in message
    assert "field blend_algorithm (MULTIPLY vs ADD)" in message


def test_a_rank_applying_another_action_is_stopped_before_the_gradient_all_reduce(played):
    message = _stopped(played["action"])
    assert f"step {PERTURBED_AT}: rank 1 action slot 0 field op (WAIT vs ADVANCE)" in message


def test_a_nan_only_one_rank_sees_is_blamed_on_the_same_seed_by_both(played):
    results = played["nan_on_one_rank"]
    assert results[0][0] == results[1][0] == "ok", results
    stages = results[0][1]
    assert results[1][1] == stages
    # BLENDING when poisoned; removed by the rollback of the next step on both ranks alike
    assert stages[len(LIFECYCLE) - 1] == Stage.BLENDING.name and stages[len(LIFECYCLE)] == Stage.PRUNED.name


def test_no_gloo_thread_outlives_the_process_group(played):
    """A gloo thread alive at interpreter exit can abort the process ("terminate called without
    an active exception"): the group's threads are joined when it is left, after a clean run
    and after a desync alike."""
    assert {mode: (ranks[0][2], ranks[1][2]) for mode, ranks in played.items()} == {mode: (0, 0) for mode in MODES}
