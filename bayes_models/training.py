"""MAP training shared by the model families: minibatch Adam on cross-entropy with an L2 (Gaussian) prior."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

SMALL_STEP_FLOPS = 5e7
"""Below this many FLOPs per step, intra-op threads cost more in synchronisation than they win (and on a
loaded machine they spin-wait): such steps run on one thread."""


@contextmanager
def intraop_threads(count: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None`` leaves it alone)."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
    n_weights = sum(p.numel() for p in network.parameters())
    single_thread = x.device.type == "cpu" and 6 * min(batch_size, x.shape[0]) * n_weights < SMALL_STEP_FLOPS
    with intraop_threads(1 if single_thread else None):
        return _train(
            network, x, y, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, generator=generator
        )


def _train(network, x, y, *, steps, batch_size, lr, weight_decay, generator) -> list[float]:
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
