"""Deep ensembles (Lakshminarayanan et al. 2017): M independently initialised MAP networks.

The predictive distribution is the uniform mixture of the members' predictions; the "samples" are the members
themselves (or, with ``mc_dropout=True``, dropout samples of every member: a mixture of MC-dropout posteriors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import torch

from bayes_models.architectures import SplitNet, resolve_device, seeded, seeded_network
from bayes_models.mc_dropout import MCDropout, MCDropoutConfig

__all__ = ["DeepEnsemble"]


class DeepEnsemble:
    """Ensemble of ``members`` MAP networks behind the common model interface (see ``bayes_models/__init__.py``).

    Member m is initialised and trained with seed ``config.seed + m`` (initial weights and minibatch order), using
    :func:`bayes_models.training.train_map` with ``config``'s steps, batch size, learning rate and weight decay.
    Without ``mc_dropout`` the members have no dropout; with it they use ``config.dropout`` and keep it on when
    sampling. ``network_factory`` (called once per member, under that member's seed) replaces the default
    :func:`build_network`.
    """

    evidence_is_bound = False

    def __init__(
        self,
        config: MCDropoutConfig,
        members: int = 5,
        *,
        device: str | torch.device = "auto",
        mc_dropout: bool = False,
        network_factory: Callable[[], SplitNet] | None = None,
    ) -> None:
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        self.config, self.mc_dropout = config, mc_dropout
        self.device = resolve_device(device)
        dropout = config.dropout if mc_dropout else 0.0
        self.members: list[MCDropout] = []
        for m in range(members):
            member_config = replace(config, seed=config.seed + m, dropout=dropout)
            if network_factory is None:
                network = seeded_network(member_config, self.device, dropout=dropout)
            else:
                with seeded(member_config.seed, self.device):
                    network = network_factory()
            self.members.append(MCDropout(member_config, device=self.device, network=network))

    def __len__(self) -> int:
        return len(self.members)

    def fit(self, x: torch.Tensor, y: torch.Tensor, prior: Any = None) -> DeepEnsemble:
        """Train every member from its current weights (MAP with ``weight_decay`` as a Gaussian prior).

        ``prior`` must be None: an ensemble is a set of point estimates with no posterior density to carry over.
        """
        if prior is not None:
            raise ValueError("DeepEnsemble takes its prior from weight_decay; it cannot start from a posterior")
        for member in self.members:
            member.fit(x, y)
        return self

    @property
    def losses(self) -> list[list[float]]:
        """Training loss of every step, per member."""
        return [member.losses for member in self.members]

    @torch.no_grad()
    def predictive_samples(
        self, x: torch.Tensor, n: int | None = None, *, seed: int = 0, batch_size: int = 2048
    ) -> torch.Tensor:
        """``probs[S, N, C]``, member-major.

        Without ``mc_dropout``: the M deterministic member predictions, sample s being member ``s mod M``
        (``n = None``: each member once). With ``n`` a multiple of M this is exactly the uniform mixture; otherwise
        a member's weight is off by at most ``1/n``. ``seed`` is not used.
        With ``mc_dropout``: ``n`` must be a multiple of M; member m contributes ``n / M`` dropout samples (rows
        ``m·n/M … (m+1)·n/M − 1``), seeded from ``seed``.
        """
        m = len(self.members)
        if not self.mc_dropout:
            if n is not None and n < 1:
                raise ValueError(f"n must be at least 1, got {n}")
            per_member = torch.stack([self._deterministic(member, x, batch_size) for member in self.members])
            return per_member if n is None else per_member[torch.arange(n) % m]
        if n is None or n < m or n % m:
            raise ValueError(f"with mc_dropout, n must be a positive multiple of the {m} members, got {n}")
        seeds = torch.randint(0, 2**62, (m,), generator=torch.Generator().manual_seed(seed)).tolist()
        return torch.cat(
            [
                member.predictive_samples(x, n // m, seed=member_seed, batch_size=batch_size)
                for member, member_seed in zip(self.members, seeds, strict=True)
            ]
        )

    def _deterministic(self, member: MCDropout, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        net, previous = member.network, member.network.training
        net.eval()
        try:
            return torch.cat(
                [
                    torch.softmax(net(x[start : start + batch_size].to(self.device, torch.float32)), dim=-1)
                    for start in range(0, x.shape[0], batch_size)
                ]
            )
        finally:
            net.train(previous)

    def posterior(self) -> list[dict[str, torch.Tensor]]:
        """The members' weights: M point masses, the ensemble's (uniform) posterior."""
        return [member.posterior() for member in self.members]

    def log_evidence(self) -> float:
        raise NotImplementedError(
            "a deep ensemble has no marginal likelihood: its members are M MAP point estimates, not a normalised "
            "posterior, so there is no log p(D) (nor a bound on it) to compare by Bayes factors; fit a Laplace "
            "approximation around the members for evidence, or use MeanFieldVI's ELBO as a bound"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "members": len(self.members),
            "mc_dropout": self.mc_dropout,
            "networks": [member.network.state_dict() for member in self.members],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["networks"]) != len(self.members) or bool(state["mc_dropout"]) != self.mc_dropout:
            raise ValueError(
                f"state has {len(state['networks'])} members (mc_dropout={state['mc_dropout']}); "
                f"this ensemble has {len(self.members)} (mc_dropout={self.mc_dropout})"
            )
        for member, network_state in zip(self.members, state["networks"], strict=True):
            member.network.load_state_dict(network_state)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, device: str | torch.device = "auto") -> DeepEnsemble:
        """Rebuild with the default networks of the config (user networks: construct, then load)."""
        config = MCDropoutConfig.from_dict(state["config"])
        model = cls(config, int(state["members"]), device=device, mc_dropout=state["mc_dropout"])
        model.load_state_dict(state)
        return model
