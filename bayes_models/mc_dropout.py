"""MC dropout (Gal & Ghahramani 2016): a MAP-trained network whose dropout stays on at prediction time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bayes_models.architectures import SplitNet, has_dropout, resolve_device, seeded, seeded_network
from bayes_models.fast_head import predictive_samples_consistent
from bayes_models.softmax import softmax_over_classes
from bayes_models.training import TrainingConfig, train_map


@dataclass(frozen=True)
class MCDropoutConfig(TrainingConfig):
    dropout: float = 0.5
    augment: bool = False
    """Images only: train on randomly shifted and rotated minibatches (``bayes_models.augment``)."""


@contextmanager
def dropout_only(module: nn.Module) -> Iterator[None]:
    """Switch on dropout layers only, leaving BatchNorm and everything else in eval mode."""
    previous = {m: m.training for m in module.modules()}
    module.eval()
    dropouts = [m for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for layer in dropouts:
        layer.train()
    try:
        yield
    finally:
        for m, training in previous.items():
            m.training = training


class MCDropout:
    """MC-dropout classifier behind the common model interface (:class:`bayes_models.interface.BayesianClassifier`)."""

    evidence_is_bound = False

    def __init__(
        self, config: MCDropoutConfig, *, device: str | torch.device = "auto", network: SplitNet | None = None
    ) -> None:
        self.config = config
        self.device = resolve_device(device)
        if network is None:
            network = seeded_network(config, self.device, dropout=config.dropout)
        self.network = network
        self.network.to(self.device)
        self.losses: list[float] = []

    def fit(self, x: torch.Tensor, y: torch.Tensor, prior: Any = None) -> MCDropout:
        """MAP fit from the current weights. ``prior`` is not used: MC dropout's prior is the weight decay."""
        if prior is not None:
            raise ValueError("MCDropout takes its prior from weight_decay; it cannot start from a posterior")
        generator = torch.Generator().manual_seed(self.config.seed)
        with seeded(self.config.seed, self.device):
            self.losses = train_map(
                self.network,
                x.to(self.device, torch.float32),
                y.to(self.device, torch.long),
                steps=self.config.steps,
                batch_size=self.config.batch_size,
                lr=self.config.lr,
                weight_decay=self.config.weight_decay,
                generator=generator,
                augment=self.config.augment,
            )
        return self

    @torch.no_grad()
    def predictive_samples(
        self, x: torch.Tensor, n: int, *, seed: int = 0, batch_size: int = 512, consistent: bool = False
    ) -> torch.Tensor:
        """``probs[S=n, N, C]`` from ``n`` dropout masks, computed in chunks of ``batch_size`` items.

        When the backbone has no dropout it runs once per item and the samples go through the head only,
        vectorised over ``[S, B, H]`` (independent masks per sample and item, as in S full passes).
        ``consistent=True`` shares each sample's mask across items and chunks (same per-item marginals; one
        matmul per chunk; what BatchBALD's joint needs, and scores that do not depend on the chunking).
        """
        if consistent and not has_dropout(self.network.features):
            return predictive_samples_consistent(self.network, x, n, seed=seed, batch_size=batch_size)
        net = self.network
        head_only = not has_dropout(net.features)
        chunks = []
        with seeded(seed, self.device), dropout_only(net):
            for start in range(0, x.shape[0], batch_size):
                batch = x[start : start + batch_size].to(self.device, torch.float32, non_blocking=True)
                if head_only:
                    hidden = net.features(batch)
                    logits = net.head(hidden.unsqueeze(0).expand(n, *hidden.shape))
                else:
                    logits = torch.stack([net(batch) for _ in range(n)])
                chunks.append(softmax_over_classes(logits))
        return torch.cat(chunks, dim=1)

    def posterior(self) -> dict[str, torch.Tensor]:
        """The MAP weights (MC dropout's variational posterior is the dropout distribution around them)."""
        return {name: p.detach().clone() for name, p in self.network.named_parameters()}

    def log_evidence(self) -> float:
        raise NotImplementedError(
            "MC dropout has no marginal likelihood; fit a Laplace approximation on its network for evidence"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "network": self.network.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, device: str | torch.device = "auto") -> MCDropout:
        model = cls(MCDropoutConfig.from_dict(state["config"]), device=device)
        model.load_state_dict(state)
        return model
