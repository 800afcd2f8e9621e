"""The Laplace model family: a MAP-trained network plus a post-hoc Laplace posterior, behind the common interface.

``fit(x, y)`` trains the network (``train_map``) and fits :class:`Laplace` with its prior precision tuned by
maximising the evidence. ``fit(x_new, y_new, prior=previous.posterior())`` is a belief update: the MAP under the
previous posterior as prior, fitted on the new data only, then ``H_new = GGN_new + H_prev``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bayes_models.architectures import SplitNet, resolve_device, seeded, seeded_network
from bayes_models.laplace.belief import GaussianBelief, map_with_gaussian_prior
from bayes_models.laplace.core import Laplace
from bayes_models.training import TrainingConfig, train_map


@dataclass(frozen=True)
class LaplaceConfig(TrainingConfig):
    subset: str = "last_layer"
    structure: str = "kfac"
    prior_precision: float = 1.0
    """Starting value of the isotropic prior precision, tuned by maximising the log evidence."""


def fit_laplace(
    network: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    subset: str,
    structure: str,
    prior_precision: float = 1.0,
    prior: GaussianBelief | None = None,
) -> Laplace:
    """Post-hoc Laplace on a trained classifier; with no ``prior`` the prior precision is tuned on ``log Z``."""
    laplace = Laplace(network, "classification", subset=subset, structure=structure, prior_precision=prior_precision)
    laplace.fit(x, y, prior=prior)
    if prior is None:
        laplace.optimize_prior_precision()
    return laplace


class LaplaceClassifier:
    """MAP network + Laplace posterior (``subset`` × ``structure``); ``log_evidence()`` is the Laplace log Z."""

    evidence_is_bound = False

    def __init__(
        self, config: LaplaceConfig, *, device: str | torch.device = "auto", network: SplitNet | None = None
    ) -> None:
        self.config = config
        self.device = resolve_device(device)
        if network is None:
            network = seeded_network(config, self.device, dropout=0.0)
        self.network = network.to(self.device)
        self.laplace: Laplace | None = None

    def fit(
        self, x: torch.Tensor, y: torch.Tensor, prior: GaussianBelief | None = None, *, steps: int | None = None
    ) -> LaplaceClassifier:
        """MAP fit (from ``prior`` when given: a belief update) for ``steps`` minibatches, then the Laplace posterior.

        ``steps`` defaults to ``config.steps``, or ``config.update_steps`` for a belief update.
        """
        c = self.config
        steps = c.steps_for(belief_update=prior is not None) if steps is None else steps
        x, y = x.to(self.device, torch.float32), y.to(self.device, torch.long)
        generator = torch.Generator().manual_seed(c.seed)
        with seeded(c.seed, self.device):
            if prior is None:
                train_map(
                    self.network,
                    x,
                    y,
                    steps=steps,
                    batch_size=c.batch_size,
                    lr=c.lr,
                    weight_decay=c.weight_decay,
                    generator=generator,
                )
            else:
                map_with_gaussian_prior(
                    self.network,
                    x,
                    y,
                    prior.mean,
                    prior.precision,
                    subset=prior.subset,
                    steps=steps,
                    batch_size=c.batch_size,
                    lr=c.lr,
                    generator=generator,
                )
        self.laplace = fit_laplace(
            self.network, x, y, subset=c.subset, structure=c.structure, prior_precision=c.prior_precision, prior=prior
        )
        return self

    def _fitted(self) -> Laplace:
        if self.laplace is None:
            raise RuntimeError("call fit(x, y) first")
        return self.laplace

    def predictive_samples(self, x: torch.Tensor, n: int, *, seed: int = 0) -> torch.Tensor:
        """``probs[S=n, N, C]`` under ``n`` weight samples from the Laplace posterior (the same for every item)."""
        generator = torch.Generator(self.device).manual_seed(seed)
        return self._fitted().predictive_samples(x.to(self.device, torch.float32), n, generator=generator)

    def predict(self, x: torch.Tensor, link: str = "probit", n_samples: int = 100) -> torch.Tensor:
        """Predictive ``probs[N, C]``: closed-form probit (MacKay) of the linearised network, or ``"mc"``."""
        return self._fitted().predict(x.to(self.device, torch.float32), link=link, n_samples=n_samples)

    def log_evidence(self) -> float:
        return self._fitted().log_evidence()

    def posterior(self) -> GaussianBelief:
        return self._fitted().posterior()

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "network": self.network.state_dict(),
            "laplace": self._fitted().state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.laplace = Laplace.from_state_dict(state["laplace"], self.network)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, device: str | torch.device = "auto") -> LaplaceClassifier:
        model = cls(LaplaceConfig.from_dict(state["config"]), device=device)
        model.load_state_dict(state)
        return model
