"""The static twin: the host this episode would have trained without any seed, alongside it.

A dormant or TRAINING plane leaves the host's forward and gradients exactly the host's (seed 003
§3.2: the seed's input is detached and its output cancels), so until the first seed's output
reaches the forward path the grown host *is* the static host. The twin is copied from it at that
moment, optimizer state included, and from then on trains on the same batches with the same
optimizer and never grows. The gap between the two is exactly what the seeds have done: the
credit the `gain_over_static` reward pays, free of the host's own learning.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn

from esper_lab.training import Evaluation, evaluate, train_epoch


class StaticTwin:
    def __init__(self, host: nn.Module, optimizer: torch.optim.Optimizer):
        self.host = copy.deepcopy(host)
        group = next(g for g in optimizer.param_groups if g.get("name") == "host")
        settings = {k: v for k, v in group.items() if k not in ("params", "name")}
        self.optimizer = type(optimizer)([{"params": list(self.host.parameters()), "name": "host", **settings}])
        for mine, theirs in zip(self.host.parameters(), group["params"]):
            if theirs in optimizer.state:
                self.optimizer.state[mine] = {k: v.clone() for k, v in optimizer.state[theirs].items()}

    def train(self, batches: Iterable, after_backward: Callable[[], None] | None = None) -> None:
        train_epoch(self.host, None, batches, self.optimizer, after_backward)

    def evaluate(self, inputs: torch.Tensor, target: torch.Tensor) -> Evaluation:
        return evaluate(self.host, None, inputs, target)
