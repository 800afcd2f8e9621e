"""MAP training shared by the model families: minibatch Adam on cross-entropy with an L2 (Gaussian) prior."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TrainingConfig:
    """What every model family needs: the data's shape, the default network's size and the MAP training budget."""

    feature_shape: tuple[int, ...]
    n_classes: int
    hidden: int = 128
    depth: int = 2
    steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


def train_map(
    network: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
) -> list[float]:
    """Fit ``network`` in place for ``steps`` minibatch updates; returns the loss of every step.

    Minibatches are drawn without replacement within each pass over the data, ordered by ``generator``.
    ``weight_decay`` is Adam's L2 term, i.e. a zero-mean Gaussian prior on the weights.
    """
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
    n = x.shape[0]
    batch_size = min(batch_size, n)
    losses: list[torch.Tensor] = []
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for _ in range(steps):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        index = order[cursor : cursor + batch_size].to(x.device)
        cursor += batch_size
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(network(x[index]), y[index])
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    network.eval()
    return torch.stack(losses).tolist()
