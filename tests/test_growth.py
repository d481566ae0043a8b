"""Growth matters: on digits, one blended conv_heavy seed beats the bare default host."""

import statistics

import pytest
import torch

from esper_lab.contracts import Action, Blueprint, Op, Tempo
from esper_lab.data import classification_batches, load_digits
from esper_lab.hosts import CNNConfig, CNNHost
from esper_lab.plane import SeedPlane
from esper_lab.training import evaluate, train_epoch

# 8 epochs of the 1077 training images: about the updates 6 epochs of the 1437 made before the test split took its share
EPOCHS = 8


def final_accuracy(seed: int, with_seed: bool) -> float:
    torch.manual_seed(seed)
    split = load_digits(seed=seed)
    host = CNNHost(CNNConfig())
    plane = SeedPlane(host, run_seed=seed)
    optimizer = torch.optim.Adam([{"params": host.parameters()}, {"params": [], "name": "seeds"}], lr=3e-3)
    if with_seed:
        last = len(plane) - 1
        for op in (Op.GERMINATE, Op.ADVANCE, Op.ADVANCE):  # germinate, train, start blending
            plane.apply(Action(op, last, Blueprint.CONV_HEAVY, tempo=Tempo.FAST))
        plane.sync_optimizer(optimizer)
    order = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        plane.tick()
        train_epoch(host, plane, classification_batches(split.train_x, split.train_y, 64, order), optimizer)
    return evaluate(host, plane, split.val_x, split.val_y).accuracy


@pytest.mark.slow
def test_blended_conv_heavy_beats_the_bare_host_on_digits():
    seeds = (0, 1, 2)
    bare = [final_accuracy(s, with_seed=False) for s in seeds]
    grown = [final_accuracy(s, with_seed=True) for s in seeds]
    assert statistics.mean(grown) > statistics.mean(bare) + 0.01, (bare, grown)
    assert statistics.mean(bare) < 0.9  # the bare host leaves headroom at this budget
