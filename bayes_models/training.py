"""MAP training shared by the model families: minibatch Adam on cross-entropy with an L2 (Gaussian) prior."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from bayes_models.augment import check_images, random_shift_rotate

SMALL_STEP_FLOPS = 5e7
"""Below this many FLOPs per training step, a second intra-op thread costs more in hand-over than it computes
(measured: a 64-128-128-10 MLP step is 4x slower on 2 threads with OMP_WAIT_POLICY=PASSIVE, 10-25x under load)."""


StepProgress = Callable[[int, int], None]
"""``progress(step, steps)``: called after each training step (1-based) of a loop of ``steps`` steps."""

_step_progress: ContextVar[StepProgress | None] = ContextVar("beliefloop_step_progress", default=None)


@contextmanager
def reporting_steps(progress: StepProgress | None) -> Iterator[None]:
    """Within the block, every training loop run by this thread (or task) calls ``progress(step, steps)`` after
    each step: an observer for progress bars, which changes nothing in the training (no argument of any ``fit``
    has to carry it). ``None`` reports nothing."""
    token = _step_progress.set(progress)
    try:
        yield
    finally:
        _step_progress.reset(token)


def report_step(step: int, steps: int) -> None:
    """Tell the observer of :func:`reporting_steps`, if any, that step ``step`` of ``steps`` is done."""
    if (progress := _step_progress.get()) is not None:
        progress(step, steps)


@contextmanager
def training_threads(network: nn.Module, batch_size: int, device: torch.device) -> Iterator[None]:
    """Run small CPU training steps on one intra-op thread; leave larger ones (and GPUs) as they are."""
    n_weights = sum(p.numel() for p in network.parameters())
    small = device.type == "cpu" and 6 * batch_size * n_weights < SMALL_STEP_FLOPS
    previous = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
    update_steps: int | None = None
    """Steps of a belief update (a fit from an earlier posterior, on the new data only); ``None``: ``steps``."""

    def steps_for(self, belief_update: bool) -> int:
        return self.update_steps if belief_update and self.update_steps is not None else self.steps

    @classmethod
    def from_dict(cls, values: dict):
        """Rebuild a config saved with ``dataclasses.asdict`` (lists from JSON/state dicts become tuples again)."""
        return cls(**{k: tuple(map(_tuple, v)) if isinstance(v, list) else v for k, v in values.items()})


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


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
    augment: bool = False,
) -> list[float]:
    """Fit ``network`` in place for ``steps`` minibatch updates; returns the loss of every step.

    Minibatches are drawn without replacement within each pass over the data, ordered by ``generator``.
    ``weight_decay`` is Adam's L2 term, i.e. a zero-mean Gaussian prior on the weights. ``augment`` (images only):
    every minibatch is shifted and rotated at random (:func:`bayes_models.augment.random_shift_rotate`), drawn
    from a generator seeded one past ``generator``'s seed, so the minibatches' order is that of a fit without.
    """
    n = x.shape[0]
    batch_size = min(batch_size, n)
    if augment:
        check_images(tuple(x.shape[1:]))
        transform = functools.partial(
            random_shift_rotate, generator=torch.Generator(generator.device).manual_seed(generator.initial_seed() + 1)
        )
    else:
        transform = None
    with training_threads(network, batch_size, x.device):
        return _train(
            network,
            x,
            y,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            generator=generator,
            transform=transform,
        )


def minibatches(
    n: int, batch_size: int, steps: int, generator: torch.Generator | None, device: torch.device
) -> Iterator[torch.Tensor]:
    """Row indices of ``steps`` minibatches of ``min(batch_size, n)`` rows, without replacement within each pass
    over the data (a new ``generator``-ordered permutation when the rest of a pass is too short)."""
    batch_size = min(batch_size, n)
    where = generator.device if generator is not None else torch.device("cpu")
    order, cursor = torch.randperm(n, generator=generator, device=where), 0
    for step in range(1, steps + 1):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=generator, device=where), 0
        yield order[cursor : cursor + batch_size].to(device)
        cursor += batch_size
        report_step(step, steps)  # resumed when the consumer asks for the next batch: this one's step is done


class FusedAdam:
    """Adam with an L2 term in the gradient (``torch.optim.Adam``'s algorithm, defaults and state) as the one fused
    kernel ``Adam(fused=True)`` calls for every parameter at once, on CPU or CUDA.

    Why not ``torch.optim.Adam`` itself: building any ``torch.optim`` optimiser imports ``torch._dynamo`` (its
    parameter-group setup is wrapped to keep dynamo out): 1.5 s of CPU and ~50 MiB in every process that trains,
    the CLI's included (a 2-round digits ``simulate`` process, measured: 0.93–0.99× the CPU time). Fused rather than
    a loop: one kernel per step instead of several ops per tensor, a small MLP's training step 0.73–0.87× the time
    on one CPU thread. Tested step for step against ``torch.optim.Adam(fused=True)``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        kinds = {(p.device, p.dtype) for p in self.params}
        if len(kinds) > 1 or any(device.type not in ("cpu", "cuda") for device, _ in kinds):
            raise ValueError(f"FusedAdam needs parameters of one dtype on one CPU or CUDA device, got {kinds}")
        self.hyper = dict(lr=lr, beta1=betas[0], beta2=betas[1], weight_decay=weight_decay, eps=eps)
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of the parameters that have a gradient (the others keep their weights and state)."""
        have = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not have:
            return
        steps = [self.steps[i] for i in have]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            [self.params[i] for i in have],
            [self.params[i].grad for i in have],
            [self.exp_avgs[i] for i in have],
            [self.exp_avg_sqs[i] for i in have],
            [],
            steps,
            amsgrad=False,
            maximize=False,
            **self.hyper,
        )


def _train(network, x, y, *, steps, batch_size, lr, weight_decay, generator, transform) -> list[float]:
    network.train()
    if x.device.type in ("cpu", "cuda"):
        optimizer = FusedAdam(network.parameters(), lr=lr, weight_decay=weight_decay)
    else:  # another accelerator: torch's own loop
        optimizer = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[torch.Tensor] = []
    for index in minibatches(x.shape[0], batch_size, steps, generator, x.device):
        optimizer.zero_grad()
        batch = x[index] if transform is None else transform(x[index])
        loss = nn.functional.cross_entropy(network(batch), y[index])
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    network.eval()
    return torch.stack(losses).tolist()
