"""Mean-field Gaussian variational inference: Bayes by Backprop (Blundell et al. 2015) on :class:`SplitNet` networks.

Every Bayesian weight has ``q(w) = N(μ, σ²)`` with ``σ = softplus(ρ)``. Training minimises the negative ELBO per
example (``DESIGN.md``, "Known traps")::

    loss = NLL_mean(minibatch) + KL(q ‖ p) / N_train

with the KL in closed form from μ and σ (never from a sampled weight) for a Gaussian prior, and by Monte Carlo for the
scale-mixture prior ``π N(0, σ1²) + (1 − π) N(0, σ2²)``, which has no closed form. Training forwards use the local
reparameterisation trick (Kingma et al. 2015): the pre-activations ``a = x Wᵀ + b`` are Gaussian with mean
``x μᵀ + μ_b`` and variance ``x² σ²ᵀ + σ_b²`` and are sampled directly, one draw per example, which lowers the
gradient variance. Predictive samples draw whole weight matrices, shared by every item of a sample, so that joint
acquisition (BatchBALD) sees correlated samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bayes_models.architectures import SplitNet, resolve_device, seeded, seeded_network
from bayes_models.priors import group_values
from bayes_models.softmax import softmax_over_classes
from bayes_models.training import TrainingConfig, report_step, training_threads

__all__ = ["BayesLinear", "ELBOParts", "MeanFieldVI", "VIConfig", "gaussian_kl", "softplus_inverse"]

_LOG_2PI = math.log(2 * math.pi)


def softplus_inverse(sigma: torch.Tensor) -> torch.Tensor:
    """ρ with ``softplus(ρ) = σ`` for σ > 0: ``ρ = σ + log(1 − exp(−σ))`` (stable for small and large σ)."""
    return sigma + torch.log(-torch.expm1(-sigma))


def gaussian_kl(mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor, sigma_p: torch.Tensor) -> torch.Tensor:
    r"""Summed closed-form :math:`\mathrm{KL}(N(\mu_q,\sigma_q^2)\,\|\,N(\mu_p,\sigma_p^2))` over all elements.

    .. math:: \sum \log\frac{\sigma_p}{\sigma_q} + \frac{\sigma_q^2 + (\mu_q-\mu_p)^2}{2\sigma_p^2} - \frac12
    """
    return (torch.log(sigma_p / sigma_q) + (sigma_q**2 + (mu_q - mu_p) ** 2) / (2 * sigma_p**2) - 0.5).sum()


def _gaussian_log_pdf(w: torch.Tensor, mu: torch.Tensor | float, sigma: torch.Tensor | float) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=w.dtype, device=w.device)
    return -0.5 * ((w - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * _LOG_2PI


class BayesLinear(nn.Module):
    """Linear layer with a factorised Gaussian posterior over its weight and bias.

    Parameters ``weight_mu``, ``weight_rho`` (``σ = softplus(ρ)``) and likewise for the bias. The prior is a per-weight
    Gaussian held in the buffers ``prior_{weight,bias}_{mu,sigma}`` (so a saved posterior can be the prior), or the
    scale mixture of Blundell et al. when :meth:`set_scale_mixture_prior` was called (kept in the extra state).

    Forward: in training mode the local reparameterisation trick (fresh pre-activation noise per example); in eval
    mode the mean weights; inside :meth:`MeanFieldVI.predictive_samples` explicit weight samples, ``[S, out, in]``
    weights applied to ``[S, B, in]`` inputs by a batched matmul.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        init_std: float = 1e-2,
        prior_mean: float = 0.0,
        prior_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.init_std = in_features, out_features, float(init_std)
        weight, bias_t = torch.empty(out_features, in_features), torch.empty(out_features) if bias else None
        self.weight_mu, self.weight_rho = nn.Parameter(weight), nn.Parameter(torch.empty_like(weight))
        self.bias_mu = nn.Parameter(bias_t) if bias else None
        self.bias_rho = nn.Parameter(torch.empty_like(bias_t)) if bias else None
        self.register_buffer("prior_weight_mu", torch.empty_like(weight))
        self.register_buffer("prior_weight_sigma", torch.empty_like(weight))
        self.register_buffer("prior_bias_mu", torch.empty_like(bias_t) if bias else None)
        self.register_buffer("prior_bias_sigma", torch.empty_like(bias_t) if bias else None)
        self.mixture: tuple[float, float, float] | None = None
        self.kl_samples = 1
        self._fixed: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.reset_parameters()
        self.set_gaussian_prior(prior_mean, prior_std)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """μ as ``nn.Linear`` initialises its weights (global RNG), σ = ``init_std``."""
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        self.weight_rho.fill_(math.log(math.expm1(self.init_std)))
        if self.bias_mu is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias_mu, -bound, bound)
            self.bias_rho.fill_(math.log(math.expm1(self.init_std)))

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs: Any) -> BayesLinear:
        """A BayesLinear whose means are ``linear``'s current weights (keeps a seeded initialisation)."""
        with torch.random.fork_rng(devices=[]):  # the means are overwritten: leave the caller's RNG alone
            layer = cls(linear.in_features, linear.out_features, linear.bias is not None, **kwargs)
        layer.to(linear.weight.device, linear.weight.dtype)
        with torch.no_grad():
            layer.weight_mu.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias_mu.copy_(linear.bias)
        return layer

    # ---- parameters and priors ------------------------------------------------------------------------------------

    @property
    def weight_sigma(self) -> torch.Tensor:
        return F.softplus(self.weight_rho)

    @property
    def bias_sigma(self) -> torch.Tensor | None:
        return None if self.bias_rho is None else F.softplus(self.bias_rho)

    def variational(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{"weight": (μ, σ), "bias": (μ, σ)}`` (differentiable)."""
        out = {"weight": (self.weight_mu, self.weight_sigma)}
        if self.bias_mu is not None:
            out["bias"] = (self.bias_mu, self.bias_sigma)
        return out

    @torch.no_grad()
    def set_gaussian_prior(
        self, mean: float | torch.Tensor, std: float | torch.Tensor, name: str | None = None
    ) -> None:
        """Gaussian prior N(mean, std²) on the weight and bias (``name`` = ``"weight"``/``"bias"``: that one only)."""
        self.mixture = None
        for part in ("weight", "bias") if name is None else (name,):
            mu, sigma = getattr(self, f"prior_{part}_mu"), getattr(self, f"prior_{part}_sigma")
            if mu is None:
                continue
            std_t = torch.as_tensor(std, dtype=sigma.dtype, device=sigma.device)
            if not bool((std_t > 0).all()):
                raise ValueError(f"prior std must be positive, got {std}")
            mu.copy_(torch.as_tensor(mean, dtype=mu.dtype, device=mu.device).expand_as(mu))
            sigma.copy_(std_t.expand_as(sigma))

    def set_scale_mixture_prior(self, pi: float, sigma1: float, sigma2: float) -> None:
        """Blundell et al.'s prior ``π N(0, σ1²) + (1 − π) N(0, σ2²)`` on every weight and bias (KL by Monte Carlo)."""
        if not (0 < pi < 1 and sigma1 > 0 and sigma2 > 0):
            raise ValueError(f"scale mixture needs 0 < pi < 1 and sigmas > 0, got {pi}, {sigma1}, {sigma2}")
        self.mixture = (float(pi), float(sigma1), float(sigma2))

    def get_extra_state(self) -> dict[str, Any]:
        return {"mixture": None if self.mixture is None else list(self.mixture), "kl_samples": self.kl_samples}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.mixture = None if state["mixture"] is None else tuple(state["mixture"])
        self.kl_samples = int(state["kl_samples"])

    def log_prior(self, w: torch.Tensor, part: str) -> torch.Tensor:
        """Elementwise log p(w) of ``part`` (``"weight"``/``"bias"``); ``w`` may carry leading sample dims."""
        if self.mixture is None:
            return _gaussian_log_pdf(w, getattr(self, f"prior_{part}_mu"), getattr(self, f"prior_{part}_sigma"))
        pi, sigma1, sigma2 = self.mixture
        return torch.logaddexp(
            _gaussian_log_pdf(w, 0.0, sigma1) + math.log(pi), _gaussian_log_pdf(w, 0.0, sigma2) + math.log1p(-pi)
        )

    def kl(self, n_samples: int | None = None) -> torch.Tensor:
        r"""KL(q ‖ p) summed over the layer: closed form for a Gaussian prior; for the scale mixture the unbiased
        Monte Carlo estimate :math:`\frac1S\sum_s \log q(w_s) - \log p(w_s)`, :math:`w_s = \mu + \sigma\epsilon_s`,
        with ``n_samples`` (default ``self.kl_samples``) draws from the global RNG."""
        total = self.weight_mu.new_zeros(())
        for part, (mu, sigma) in self.variational().items():
            if self.mixture is None:
                total = total + gaussian_kl(
                    mu, sigma, getattr(self, f"prior_{part}_mu"), getattr(self, f"prior_{part}_sigma")
                )
                continue
            s = n_samples or self.kl_samples
            eps = torch.randn(s, *mu.shape, dtype=mu.dtype, device=mu.device)
            log_q = -0.5 * eps**2 - torch.log(sigma) - 0.5 * _LOG_2PI
            total = total + (log_q - self.log_prior(mu + sigma * eps, part)).sum() / s
        return total

    # ---- forward passes -------------------------------------------------------------------------------------------

    def preactivation_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``x μᵀ + μ_b`` and variance ``x² σ²ᵀ + σ_b²`` of the pre-activations under q."""
        sigma_b = self.bias_sigma
        mean = F.linear(x, self.weight_mu, self.bias_mu)
        var = F.linear(x**2, self.weight_sigma**2, None if sigma_b is None else sigma_b**2)
        return mean, var

    def sample_weights(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weights ``μ + σ ε`` from the global RNG: ``([n, out, in], [n, out])``, or one draw when ``n`` is None."""
        shape = () if n is None else (n,)
        w = self.weight_mu + self.weight_sigma * torch.randn(*shape, *self.weight_mu.shape, **_like(self.weight_mu))
        if self.bias_mu is None:
            return w, None
        return w, self.bias_mu + self.bias_sigma * torch.randn(*shape, *self.bias_mu.shape, **_like(self.bias_mu))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fixed is not None:
            w, b = self._fixed
            if w.ndim == 2:
                return F.linear(x, w, b)
            s = w.shape[0]  # x: [S, ..., in] with one weight sample per leading index
            flat = x.reshape(s, -1, x.shape[-1])
            out = torch.bmm(flat, w.transpose(1, 2)) if b is None else torch.baddbmm(b[:, None, :], flat, w.mT)
            return out.reshape(*x.shape[:-1], self.out_features)
        if not self.training:
            return F.linear(x, self.weight_mu, self.bias_mu)
        mean, var = self.preactivation_moments(x)
        return mean + var.clamp_min(1e-30).sqrt() * torch.randn_like(mean)

    def extra_repr(self) -> str:
        prior = "gaussian" if self.mixture is None else f"scale_mixture{self.mixture}"
        return f"in_features={self.in_features}, out_features={self.out_features}, prior={prior}"


def _like(t: torch.Tensor) -> dict[str, Any]:
    return {"dtype": t.dtype, "device": t.device}


@contextmanager
def _fixed_weights(samples: Mapping[BayesLinear, tuple[torch.Tensor, torch.Tensor | None]]) -> Iterator[None]:
    for layer, sample in samples.items():
        layer._fixed = sample
    try:
        yield
    finally:
        for layer in samples:
            layer._fixed = None


def _bayesianize(module: nn.Module, **kwargs: Any) -> nn.Module:
    """``module`` with every ``nn.Linear`` in it (itself included) replaced by a :class:`BayesLinear` whose means are
    the Linear's weights; other modules are changed in place."""
    if type(module) is nn.Linear:
        return BayesLinear.from_linear(module, **kwargs)
    for name, child in module.named_children():
        setattr(module, name, _bayesianize(child, **kwargs))
    return module


@dataclass(frozen=True)
class VIConfig(TrainingConfig):
    """Settings of :class:`MeanFieldVI`.

    ``bayesian``: ``"head"`` (Linear layers of the head; the backbone is a MAP point estimate with ``weight_decay``,
    and sampling runs the backbone once per item) or ``"all"`` (every Linear layer; convolutions stay MAP).
    ``prior``: ``"gaussian"`` (N(prior_mean, prior_std²); ``layer_priors`` = ``((layer_group, mean, std), ...)``
    overrides per layer group: a layer's name or a dotted prefix such as ``"head"``, the most specific winning) or
    ``"scale_mixture"`` (``mixture_pi``, ``mixture_sigma1``, ``mixture_sigma2``).
    ``init_std``: initial σ of q. ``kl_samples``: Monte Carlo draws of the mixture KL per step. ``elbo_samples``:
    weight samples of the ELBO estimated at the end of :meth:`MeanFieldVI.fit`.
    """

    bayesian: str = "head"
    prior: str = "gaussian"
    prior_mean: float = 0.0
    prior_std: float = 1.0
    layer_priors: tuple[tuple[str, float, float], ...] = ()
    mixture_pi: float = 0.5
    mixture_sigma1: float = 1.0
    mixture_sigma2: float = math.exp(-6)
    init_std: float = 1e-2
    kl_samples: int = 1
    elbo_samples: int = 32
    steps: int = 1000

    def __post_init__(self) -> None:
        if self.bayesian not in ("head", "all"):
            raise ValueError(f"bayesian must be 'head' or 'all', got {self.bayesian!r}")
        if self.prior not in ("gaussian", "scale_mixture"):
            raise ValueError(f"prior must be 'gaussian' or 'scale_mixture', got {self.prior!r}")
        if self.prior_std <= 0 or self.init_std <= 0:
            raise ValueError(f"prior_std and init_std must be positive, got {self.prior_std} and {self.init_std}")
        bad = [(group, std) for group, _, std in self.layer_priors if not std > 0]
        if bad:
            raise ValueError(f"layer_priors: a prior std must be positive, got {bad}")
        if self.prior == "scale_mixture" and not (
            0 < self.mixture_pi < 1 and self.mixture_sigma1 > 0 and self.mixture_sigma2 > 0
        ):
            raise ValueError(
                "the scale mixture needs 0 < mixture_pi < 1 and positive sigmas, got "
                f"{self.mixture_pi}, {self.mixture_sigma1}, {self.mixture_sigma2}"
            )


@dataclass(frozen=True)
class ELBOParts:
    r"""The ELBO's two terms over a data set: ``elbo = expected_log_lik − kl``.

    ``expected_log_lik`` :math:`= \sum_i E_q[\log p(y_i \mid x_i, w)]` (summed over the data, nats) and
    ``kl`` :math:`= \mathrm{KL}(q \| p)`. Shown apart they tell posterior collapse (KL near 0 while the expected
    log likelihood stays far below the data's) from over-regularisation (a KL the likelihood cannot pay for).
    """

    expected_log_lik: float
    kl: float

    @property
    def elbo(self) -> float:
        return self.expected_log_lik - self.kl


class MeanFieldVI:
    """Bayes by Backprop classifier behind the common model interface (see ``bayes_models/__init__.py``).

    :meth:`log_evidence` returns the ELBO, a **lower bound** on the log marginal likelihood, not the evidence itself
    (``evidence_is_bound = True``); compare it with Laplace evidences only as a bound.
    """

    evidence_is_bound = True

    def __init__(
        self, config: VIConfig, *, device: str | torch.device = "auto", network: SplitNet | None = None
    ) -> None:
        self.config = config
        self.device = resolve_device(device)
        if network is None:
            network = seeded_network(config, self.device, dropout=0.0)
        if config.bayesian == "head":
            network.head = _bayesianize(network.head, init_std=config.init_std)
        else:
            network = _bayesianize(network, init_std=config.init_std)
        self.network = network.to(self.device).eval()
        self.layers = {name: m for name, m in self.network.named_modules() if isinstance(m, BayesLinear)}
        if not self.layers:
            raise ValueError(f"no Linear layer to make Bayesian in the network's {config.bayesian}")
        self._apply_config_prior()
        self.history: dict[str, list[float]] = {"nll": [], "kl": [], "loss": []}
        self._elbo: ELBOParts | None = None
        self.prior_from_posterior = False

    def _apply_config_prior(self) -> None:
        c = self.config
        for layer in self.layers.values():
            layer.kl_samples = c.kl_samples
            if c.prior == "scale_mixture":
                layer.set_scale_mixture_prior(c.mixture_pi, c.mixture_sigma1, c.mixture_sigma2)
            else:
                layer.set_gaussian_prior(c.prior_mean, c.prior_std)
        entries = [(group, float(i)) for i, (group, _, _) in enumerate(c.layer_priors)]
        chosen = group_values(list(self.layers), -1.0, entries, what="layer_priors (Bayesian layers only)")
        for layer, index in zip(self.layers.values(), chosen, strict=True):
            if index >= 0:
                _, mean, std = c.layer_priors[int(index)]
                layer.set_gaussian_prior(mean, std)

    # ---- interface ------------------------------------------------------------------------------------------------

    def kl(self, n_samples: int | None = None) -> torch.Tensor:
        """KL(q ‖ p) summed over every Bayesian layer (see :meth:`BayesLinear.kl`)."""
        return sum((layer.kl(n_samples) for layer in self.layers.values()), torch.zeros((), device=self.device))

    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        prior: Mapping[str, tuple[torch.Tensor, Any]] | None = None,
        *,
        steps: int | None = None,
    ) -> MeanFieldVI:
        """Minimise ``NLL_mean + KL / N`` by Adam for ``steps`` minibatches (default: ``config.steps``, or
        ``config.update_steps`` once the prior is a posterior), from the current q.

        ``prior``: a :meth:`posterior` of an earlier fit (``{name: (mu, sigma)}``). It becomes the prior and the
        starting q, so the objective is ``KL(q_new ‖ q_prev)`` plus the NLL of the new data: a belief update, whose
        ELBO bounds ``log p(D_new | D_prev)``. With no data (``N = 0``) q stays equal to the prior and the ELBO is 0.
        The prior over the Bayesian layers is conditioned on the deterministic layers (the backbone with
        ``bayesian="head"``, convolutions with ``"all"``), so once the prior is a posterior those layers and their
        BatchNorm statistics are frozen; update the model that made the prior (or one loaded from its ``state_dict``).
        """
        if prior is not None:
            self._set_prior(prior)
        x, y = x.to(self.device, torch.float32), y.to(self.device, torch.long)
        self.history = {"nll": [], "kl": [], "loss": []}
        n = x.shape[0]
        with seeded(self.config.seed, self.device):
            if n > 0:
                with training_threads(self.network, min(self.config.batch_size, n), self.device):
                    default = self.config.steps_for(belief_update=self.prior_from_posterior)
                    self._train(
                        x, y, torch.Generator().manual_seed(self.config.seed), default if steps is None else steps
                    )
            self._elbo = self.elbo_parts(x, y, n_samples=self.config.elbo_samples, seed=self.config.seed)
        return self

    def _train(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, steps: int) -> None:
        c, net, n = self.config, self.network, x.shape[0]
        bayes = {id(p) for layer in self.layers.values() for p in layer.parameters()}
        groups = [{"params": [p for p in net.parameters() if id(p) in bayes], "weight_decay": 0.0}]
        if not self.prior_from_posterior:  # MAP for the deterministic layers (weight decay = Gaussian prior)
            groups.append(
                {"params": [p for p in net.parameters() if id(p) not in bayes], "weight_decay": c.weight_decay}
            )
        optimizer = torch.optim.Adam(groups, lr=c.lr)
        batch_size = min(c.batch_size, n)
        order, cursor = torch.randperm(n, generator=generator), 0
        logs = []
        net.train()
        if self.prior_from_posterior:
            for m in net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        try:
            for step in range(1, steps + 1):
                if cursor + batch_size > n:
                    order, cursor = torch.randperm(n, generator=generator), 0
                index = order[cursor : cursor + batch_size].to(self.device)
                cursor += batch_size
                optimizer.zero_grad(set_to_none=True)
                nll = F.cross_entropy(net(x[index]), y[index])
                kl = self.kl()
                loss = nll + kl / n
                loss.backward()
                optimizer.step()
                logs.append(torch.stack([nll, kl, loss]).detach())
                report_step(step, steps)
        finally:
            net.eval()
        if logs:
            self.history = dict(zip(("nll", "kl", "loss"), torch.stack(logs).T.tolist(), strict=True))

    def elbo(self, x: torch.Tensor, y: torch.Tensor, *, n_samples: int = 32, seed: int = 0) -> float:
        r"""ELBO estimate :math:`\sum_i \frac1S\sum_s \log p(y_i \mid x_i, w_s) - \mathrm{KL}(q\|p)`, summed over the
        data (a lower bound on :math:`\log p(D)`); KL in closed form, or with ``n_samples`` draws for the mixture."""
        return self.elbo_parts(x, y, n_samples=n_samples, seed=seed).elbo

    @torch.no_grad()
    def elbo_parts(self, x: torch.Tensor, y: torch.Tensor, *, n_samples: int = 32, seed: int = 0) -> ELBOParts:
        """The two terms of :meth:`elbo`, from the same draws."""
        with seeded(seed, self.device):
            kl = float(self.kl(n_samples))
            if x.shape[0] == 0:
                return ELBOParts(0.0, kl)
            log_probs = torch.log_softmax(self._logit_samples(x.to(self.device, torch.float32), n_samples), dim=-1)
        log_lik = log_probs.gather(-1, y.to(self.device, torch.long).expand(n_samples, -1)[..., None]).squeeze(-1)
        return ELBOParts(float(log_lik.double().mean(0).sum()), kl)

    def _logit_samples(self, x: torch.Tensor, n: int, batch_size: int = 2048) -> torch.Tensor:
        """``logits[n, N, C]``, one weight sample per index shared by all items; draws from the global RNG."""
        net, previous = self.network, self.network.training
        head_only = not any(isinstance(m, BayesLinear) for m in net.features.modules())
        net.eval()
        try:
            if head_only:
                heads = {layer: layer.sample_weights(n) for layer in self.layers.values()}
                with _fixed_weights(heads):
                    chunks = []
                    for start in range(0, x.shape[0], batch_size):
                        hidden = net.features(x[start : start + batch_size].to(self.device, non_blocking=True))
                        chunks.append(net.head(hidden.unsqueeze(0).expand(n, *hidden.shape)))
                return torch.cat(chunks, dim=1)
            passes = []
            for _ in range(n):
                with _fixed_weights({layer: layer.sample_weights() for layer in self.layers.values()}):
                    passes.append(
                        torch.cat(
                            [
                                net(x[start : start + batch_size].to(self.device, non_blocking=True))
                                for start in range(0, x.shape[0], batch_size)
                            ]
                        )
                    )
            return torch.stack(passes)
        finally:
            net.train(previous)

    @torch.no_grad()
    def predictive_samples(self, x: torch.Tensor, n: int, *, seed: int = 0, batch_size: int = 2048) -> torch.Tensor:
        """``probs[S=n, N, C]``: sample s uses one weight draw for every item (correlated across items).

        The draws depend on ``seed`` only, not on ``x``: scoring a pool in chunks with one seed uses the same n
        posterior samples for every chunk.

        With Bayesian layers only in the head, the backbone runs once per item and the n weight samples go through the
        head vectorised (``[S, B, H] @ [S, H, C]``); with Bayesian layers in the backbone, n full passes. Head modules
        other than BayesLinear must act on the last dimension (no BatchNorm in the head).
        """
        with seeded(seed, self.device):
            return softmax_over_classes(self._logit_samples(x.to(torch.float32), n, batch_size))

    def log_evidence(self) -> float:
        """The ELBO of the last :meth:`fit` (summed over its data): a lower bound on log p(D), not the evidence."""
        return self.elbo_terms.elbo

    @property
    def elbo_terms(self) -> ELBOParts:
        """Expected log likelihood and KL of the last :meth:`fit`'s ELBO (a belief update: of its new data)."""
        if self._elbo is None:
            raise RuntimeError("the ELBO needs a fit() first: it is estimated at the end of fit")
        return self._elbo

    def posterior(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{"<layer>.weight" | "<layer>.bias": (mu, sigma)}`` of every Bayesian layer: the next round's prior."""
        return {
            f"{name}.{part}": (mu.detach().clone(), sigma.detach().clone())
            for name, layer in self.layers.items()
            for part, (mu, sigma) in layer.variational().items()
        }

    @torch.no_grad()
    def _set_prior(self, prior: Mapping[str, tuple[torch.Tensor, Any]]) -> None:
        expected = {f"{name}.{part}" for name, layer in self.layers.items() for part in layer.variational()}
        if set(prior) != expected:
            raise ValueError(
                f"prior must hold (mu, sigma) for exactly the Bayesian parameters {sorted(expected)}; "
                f"missing {sorted(expected - set(prior))}, unknown {sorted(set(prior) - expected)}"
            )
        checked = []
        for key, (mu, sigma) in prior.items():  # check everything before changing anything
            layer_name, part = key.rsplit(".", 1)
            layer = self.layers[layer_name]
            q_mu = getattr(layer, f"{part}_mu")
            mu, sigma = torch.as_tensor(mu, **_like(q_mu)), torch.as_tensor(sigma, **_like(q_mu))
            if mu.shape != q_mu.shape or sigma.shape != q_mu.shape:
                raise ValueError(f"prior {key!r} has shapes {tuple(mu.shape)}, {tuple(sigma.shape)}; want {q_mu.shape}")
            if not bool((sigma > 0).all()) or not bool(mu.isfinite().all()):
                raise ValueError(f"prior {key!r} needs finite means and positive standard deviations")
            checked.append((layer, part, mu, sigma))
        for layer, part, mu, sigma in checked:
            q_rho = getattr(layer, f"{part}_rho")
            getattr(layer, f"{part}_mu").copy_(mu)
            q_rho.copy_(softplus_inverse(sigma))
            # the prior σ is the one softplus(ρ) represents (within an ulp of ``sigma``), so KL(q ‖ prior) is exactly 0
            layer.set_gaussian_prior(mu, F.softplus(q_rho), name=part)
        self.prior_from_posterior = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "network": self.network.state_dict(),
            "elbo": None if self._elbo is None else asdict(self._elbo),
            "history": self.history,
            "prior_from_posterior": self.prior_from_posterior,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])  # the layers' extra state restores a mixture prior or not
        self._elbo = None if state["elbo"] is None else ELBOParts(**state["elbo"])
        self.history = {key: list(values) for key, values in state["history"].items()}
        self.prior_from_posterior = bool(state["prior_from_posterior"])

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, device: str | torch.device = "auto") -> MeanFieldVI:
        """Rebuild a model with the default network of its config (user networks: construct, then load)."""
        model = cls(VIConfig.from_dict(state["config"]), device=device)
        model.load_state_dict(state)
        return model
