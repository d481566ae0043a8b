"""Host training: one epoch of minibatches and one evaluation, shared by every caller.

The same functions serve classification (logits [B, C]) and language modelling
(logits [B, T, V]): the loss flattens every leading dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EVAL_BATCH = 512  # evaluation is forward-only; big batches amortise Python overhead


def loss_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, -2), target.flatten())


def train_epoch(
    host: nn.Module,
    plane: nn.Module | None,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    after_backward: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Train over `batches`; return the mean training loss as a tensor (no host sync per batch).

    `after_backward` runs between backward and the optimizer step (data-parallel gradient
    averaging hooks in there)."""
    host.train()
    total = torch.zeros((), device=next(host.parameters()).device)
    count = 0
    for inputs, target in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(host(inputs, plane), target)
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        total += loss.detach()
        count += 1
    return total / max(count, 1)


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float  # top-1 over samples (classification) or tokens (language model)


@torch.inference_mode()
def evaluate(
    host: nn.Module,
    plane: nn.Module | None,
    inputs: torch.Tensor,
    target: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Evaluation:
    """Loss and accuracy over (inputs, target); `prepare` turns each chunk of raw inputs into
    host inputs (so a split of raw pixels is never copied whole as floats)."""
    host.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=target.device)
    correct = torch.zeros((), dtype=torch.long, device=target.device)
    for start in range(0, len(inputs), EVAL_BATCH):
        chunk = inputs[start : start + EVAL_BATCH]
        logits = host(chunk if prepare is None else prepare(chunk), plane)
        part = target[start : start + EVAL_BATCH]
        loss_sum += F.cross_entropy(logits.flatten(0, -2), part.flatten(), reduction="sum").double()
        correct += (logits.argmax(-1) == part).sum()
    n = target.numel()
    return Evaluation(loss=float(loss_sum) / n, accuracy=float(correct) / n)
