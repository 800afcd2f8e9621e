"""The Laplace model family: a network trained under a Gaussian prior plus a Laplace posterior, behind the common
interface.

``training="marglik"`` (default): the network and its layer-wise prior precisions are fitted together by
marginal-likelihood training (:mod:`.marglik`, Immer et al. 2021); the posterior and evidence are the final
network's under that prior. ``training="map"``: Adam with weight decay, then a post-hoc Laplace whose prior precision
is tuned by maximising the evidence (the evidence's prior then differs from the one the network was trained under).
Networks that an all-weights KFAC does not cover (convolutions) train the ``"map"`` way, with a logged warning.
``fit(x_new, y_new, prior=previous.posterior())`` is a belief update: the MAP under the previous posterior as prior,
fitted on the new data only, then ``H_new = GGN_new + H_prev``.

The predictive of a network trained under an explicit prior (marglik or stated) is by default not the evidence's
all-weights KFAC but a last-layer KFAC Laplace, probit link (``predictive="last_layer_kfac"``, ``link="probit"``),
under a last-layer precision re-tuned on that Laplace's own ``log Z`` after marglik training
(``predictive_prior="retuned"``; a stated prior's as stated). Under the trained ``δ_L`` instead
(``"trained"``) it is the evidence's posterior with the backbone held at its MAP (its last block of the
layer-block-diagonal KFAC precision, exactly). The all-weights KFAC is far too wide for
prediction (MNIST with 1,000 labels, 12 networks × 3 seeds: test NLL 0.58 and ECE 0.22 against 0.42 / 0.07), and
the last layer's exact (full) GGN predicts no better (0.42 / 0.08) at ``N·P²`` cost (``benchmarks/evidence.py``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bayes_models.architectures import SplitNet, resolve_device, seeded, seeded_network
from bayes_models.laplace import full
from bayes_models.laplace._common import Subnet, check_option
from bayes_models.laplace.belief import GaussianBelief, map_with_gaussian_prior
from bayes_models.laplace.core import Laplace
from bayes_models.laplace.kfac import covers
from bayes_models.laplace.marglik import marglik_training
from bayes_models.priors import group_values
from bayes_models.training import TrainingConfig, train_map

log = logging.getLogger(__name__)
TRAININGS = ("marglik", "map")
PREDICTIVES = ("last_layer_kfac", "last_layer_full", "evidence")
PREDICTIVE_PRIORS = ("retuned", "trained")
LINKS = ("mc", "probit")


@dataclass(frozen=True)
class LaplaceConfig(TrainingConfig):
    subset: str = "all"
    structure: str = "kfac"
    training: str = "marglik"
    """``"marglik"``: prior precisions tuned during training; ``"map"``: weight decay, prior tuned post hoc."""
    prior_precision: float = 1.0
    """Starting value of the prior precision, tuned by maximising the log evidence."""
    prior_structure: str = "layerwise"
    """``"layerwise"`` (one precision per layer) or ``"scalar"`` (one for all weights); marglik training only."""
    marglik_updates: int = 2
    """Hyperparameter updates of marglik training, one every ``steps // marglik_updates`` steps (the first ends the
    burn-in). Two, the first after half the steps: with four, the first update (after a quarter of the steps) set
    strong first-layer priors that the weights then shrank under — a poorer fixed point, lower ``log Z`` than a MAP
    network of the same architecture under a post-hoc prior (MNIST 1k: −876 against −791 nats); two raised ``log Z``
    on every architecture tried (``benchmarks/evidence.py``, README **Evidence**)."""
    marglik_steps: int = 20
    """Adam steps on ``log δ`` per update (``"kfac"``), or most fixed-point iterations (``"exact_ggn"``)."""
    marglik_lr: float = 0.1
    marglik_evidence: str = "exact_ggn"
    """The ``log Z`` marglik updates maximise: ``"exact_ggn"``, the exact GGN's in kernel form on ``marglik_rows // C``
    items drawn at each update (C − 1 kernel rows each for the softmax), or ``"kfac"`` (Immer et al. 2021; see
    ``marglik_training``)."""
    marglik_rows: int = 1024
    marglik_peak_lr: float | None = None
    """Training under an explicit prior (marglik or stated) starts the weights' Adam at this learning rate and decays
    it to 0 on a cosine over the steps; ``None`` (the default): ``lr``, constant. Not the default: on MNIST 1k a
    peak of 1e-2 fitted better networks (mean test NLL 0.422 → 0.368) that the evidence ranked worse (Spearman ρ
    0.84 → 0.65), and on digits it widened the 512-wide networks' last-layer predictive; 3e-3 kept MNIST's ranking
    but not digits' (``benchmarks/evidence.py``, ``evidence_marglik_peak_lr_*.json``)."""
    prior_std: float | None = None
    """A stated Gaussian prior ``N(0, prior_std²)`` on every weight: trained under and evidence computed under it,
    never tuned (``training`` is then not used). ``None``: the prior is tuned (``training``)."""
    layer_prior_std: tuple[tuple[str, float], ...] = ()
    """Stated prior std per layer group (a module name or dotted prefix, e.g. ``"head"``; the most specific wins);
    layers no group covers take ``prior_std``, or 1.0 when it is ``None``."""
    predictive: str = "last_layer_kfac"
    """The posterior that ``predict`` and ``predictive_samples`` use after training under an explicit prior (marglik
    or stated): ``"last_layer_kfac"`` / ``"last_layer_full"``, a last-layer Laplace (KFAC or full GGN; KFAC when the
    layer has more than ``full.MAX_PARAMS`` weights) under that prior's last-layer precision; ``"evidence"``, the
    evidence's own Laplace (``subset`` × ``structure``). MAP training and belief updates predict with the evidence's."""
    predictive_prior: str = "retuned"
    """The last-layer predictive's prior precision after marglik training: ``"retuned"`` maximises the last layer's
    own Laplace ``log Z`` at the trained network (the backbone held at its MAP, as the predictive holds it);
    ``"trained"``: the last layer's ``δ_L`` of the all-weights prior. A scalar prior's one ``δ`` suits the first
    layers, not the last (digits: 512-wide networks' last-layer predictive 0.01 nats/item worse under it). A stated
    prior is never re-tuned."""
    link: str = "probit"
    """``predict``'s default link: ``"probit"`` (MacKay's closed form) or ``"mc"`` (mean softmax of sampled outputs;
    pool scoring always samples). Probit is the default, as in laplace-torch: the last-layer posterior is too wide
    at these label counts, and probit's approximation errs towards confidence (MNIST 1k, 12 networks × 3 seeds: NLL
    / ECE 0.399 / 0.046 against MC's 0.407 / 0.053), and its ranking by test NLL agrees better with the evidence."""

    def __post_init__(self) -> None:
        check_option("predictive", self.predictive, PREDICTIVES)
        check_option("predictive_prior", self.predictive_prior, PREDICTIVE_PRIORS)
        check_option("link", self.link, LINKS)
        stds = ([] if self.prior_std is None else [("prior_std", self.prior_std)]) + list(self.layer_prior_std)
        bad = [(name, std) for name, std in stds if not std > 0]
        if bad:
            raise ValueError(f"a prior std must be positive, got {bad}")

    @property
    def stated_prior(self) -> bool:
        return self.prior_std is not None or bool(self.layer_prior_std)


def laplace_subset(network: nn.Module, subset: str, structure: str) -> str:
    """``subset``, or ``"last_layer"`` where an all-weights KFAC does not cover ``network`` (logged)."""
    if subset == "all" and structure == "kfac" and not covers(network):
        log.warning("all-weights KFAC covers nn.Linear layers only: %s falls back to last-layer KFAC", network)
        return "last_layer"
    return subset


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
    """Network + Laplace posterior (``subset`` × ``structure``); ``log_evidence()`` is the Laplace log Z."""

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
        """The evidence's Laplace: ``log_evidence`` and ``posterior`` (the next round's prior)."""
        self.predictive_laplace: Laplace | None = None
        """The one ``predict`` and ``predictive_samples`` use (``config.predictive``); ``None``: ``laplace``."""

    def fit(
        self, x: torch.Tensor, y: torch.Tensor, prior: GaussianBelief | None = None, *, steps: int | None = None
    ) -> LaplaceClassifier:
        """Train for ``steps`` minibatches (marglik or MAP; the MAP under ``prior`` when given: a belief update),
        then the Laplace posterior.

        ``steps`` defaults to ``config.steps``, or ``config.update_steps`` for a belief update.
        """
        c = self.config
        check_option("training", c.training, TRAININGS)
        steps = c.steps_for(belief_update=prior is not None) if steps is None else steps
        x, y = x.to(self.device, torch.float32), y.to(self.device, torch.long)
        generator = torch.Generator().manual_seed(c.seed)
        subset = laplace_subset(self.network, c.subset, c.structure)
        self.predictive_laplace = None
        if prior is None and c.stated_prior:
            if not covers(self.network):
                raise ValueError("a stated prior std for the laplace family needs a network of nn.Linear layers only")
            with seeded(c.seed, self.device):
                self._marglik(x, y, steps, subset, generator, fixed=self.stated_precision())
            return self
        marglik = prior is None and c.training == "marglik"
        if marglik and not covers(self.network):
            log.warning("marglik training needs an all-weights KFAC (nn.Linear layers only): MAP training instead")
            marglik = False
        with seeded(c.seed, self.device):
            if marglik:
                self._marglik(x, y, steps, subset, generator)
                return self
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
                self._map_under(x, y, prior.mean, prior.precision, prior.subset, steps, generator)
        self.laplace = fit_laplace(
            self.network, x, y, subset=subset, structure=c.structure, prior_precision=c.prior_precision, prior=prior
        )
        return self

    def finetune(self, x: torch.Tensor, y: torch.Tensor, *, steps: int | None = None) -> LaplaceClassifier:
        """Naive fine-tuning, the baseline a belief update is measured against: the belief update's optimiser,
        steps and minibatches on ``(x, y)`` from the current weights, but under a flat prior (precision 0) on the
        posterior's weights (the others stay frozen, as in the update); then a post-hoc Laplace of ``(x, y)``
        alone, its prior precision tuned on their evidence. The old data survive only in the starting point.

        ``steps`` defaults to ``config.update_steps`` (else ``config.steps``), as a belief update's.
        """
        c = self.config
        posterior = self.posterior()
        steps = c.steps_for(belief_update=True) if steps is None else steps
        x, y = x.to(self.device, torch.float32), y.to(self.device, torch.long)
        with seeded(c.seed, self.device):
            self._map_under(x, y, posterior.mean, 0.0, posterior.subset, steps, torch.Generator().manual_seed(c.seed))
        subset = laplace_subset(self.network, c.subset, c.structure)
        self.predictive_laplace = None
        self.laplace = fit_laplace(
            self.network, x, y, subset=subset, structure=c.structure, prior_precision=c.prior_precision
        )
        return self

    def _map_under(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mean: torch.Tensor,
        precision: Any,
        subset: str,
        steps: int,
        generator: torch.Generator,
    ) -> None:
        """Adam MAP of the ``subset`` weights under ``N(mean, precision⁻¹)`` (the rest frozen), in place."""
        c = self.config
        map_with_gaussian_prior(
            self.network,
            x,
            y,
            mean,
            precision,
            subset=subset,
            steps=steps,
            batch_size=c.batch_size,
            lr=c.lr,
            generator=generator,
        )

    def stated_precision(self) -> torch.Tensor:
        """``δ_l = 1 / std_l²`` of the stated prior, one per layer (``Subnet(network, "all").groups`` order)."""
        c = self.config
        layers = [name for name, _, _ in Subnet(self.network, "all").groups]
        stds = group_values(layers, 1.0 if c.prior_std is None else c.prior_std, c.layer_prior_std)
        return torch.tensor([std**-2 for std in stds], dtype=torch.float64)

    def _marglik(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        steps: int,
        subset: str,
        generator: torch.Generator,
        fixed: torch.Tensor | None = None,
    ) -> None:
        """Marginal-likelihood training; sets the Laplace of ``subset`` × ``structure`` under the trained prior and
        the predictive's (``config.predictive``). ``fixed`` (one precision per layer): the MAP under that prior,
        which is not tuned."""
        c = self.config
        every = max(1, steps // c.marglik_updates)
        result = marglik_training(
            self.network,
            x,
            y,
            steps=steps,
            batch_size=c.batch_size,
            lr=c.lr if c.marglik_peak_lr is None else c.marglik_peak_lr,
            lr_schedule="constant" if c.marglik_peak_lr is None else "cosine",
            burnin=every,
            every=every,
            hyper_steps=c.marglik_steps,
            hyper_lr=c.marglik_lr,
            hyper_evidence=c.marglik_evidence,
            hyper_rows=c.marglik_rows,
            prior_precision=c.prior_precision if fixed is None else fixed,
            prior_structure=c.prior_structure if fixed is None else "layerwise",
            tune_prior=fixed is None,
            generator=generator,
        )
        if (subset, c.structure) == ("all", "kfac"):
            self.laplace = result.laplace
        else:
            self.laplace = self._under_prior(result.prior_precision, x, y, subset, c.structure)
        if c.predictive != "evidence":
            structure = c.predictive.removeprefix("last_layer_")
            n_params = Subnet(self.network, "last_layer").n_params
            if structure == "full" and n_params > full.MAX_PARAMS:
                log.warning("last layer of %d weights: a last-layer KFAC predictive, not full", n_params)
                structure = "kfac"
            self.predictive_laplace = self._under_prior(result.prior_precision, x, y, "last_layer", structure)
            if fixed is None and c.predictive_prior == "retuned":
                self.predictive_laplace.optimize_prior_precision()
        log.info("laplace predictive: %s, %s prior (%s link)", c.predictive, c.predictive_prior, c.link)

    def _under_prior(
        self, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, subset: str, structure: str
    ) -> Laplace:
        """The Laplace of ``subset`` × ``structure`` at the current weights under the trained prior ``δ`` (a scalar
        or one per layer of ``Subnet(network, "all")``), i.e. the precisions of the layers it covers."""
        groups = Subnet(self.network, "all").groups
        delta = delta.expand(len(groups))
        covered = {id(module) for _, module, _ in Subnet(self.network, subset).groups}
        kept = torch.stack([d for (_, module, _), d in zip(groups, delta, strict=True) if id(module) in covered])
        laplace = Laplace(self.network, "classification", subset=subset, structure=structure, prior_precision=kept)
        return laplace.fit(x, y)

    def _fitted(self) -> Laplace:
        if self.laplace is None:
            raise RuntimeError("call fit(x, y) first")
        return self.laplace

    def predictor(self) -> Laplace:
        """The Laplace that ``predict`` and ``predictive_samples`` use (``config.predictive``)."""
        return self._fitted() if self.predictive_laplace is None else self.predictive_laplace

    def scale_prior(self, factor: float) -> None:
        """Multiply the prior precision by ``factor`` in the evidence's Laplace and in the predictor's (the same
        prior): a prior scale tuned on validation NLL (:func:`.tuning.tune_prior_on_validation`)."""
        for laplace in {id(la): la for la in (self._fitted(), self.predictor())}.values():
            laplace.prior_precision = factor * laplace.prior_precision

    def predictive_samples(self, x: torch.Tensor, n: int, *, seed: int = 0) -> torch.Tensor:
        """``probs[S=n, N, C]`` under ``n`` weight samples from the predictive's Laplace posterior (the same for every
        item)."""
        generator = torch.Generator(self.device).manual_seed(seed)
        return self.predictor().predictive_samples(x.to(self.device, torch.float32), n, generator=generator)

    def predict(self, x: torch.Tensor, link: str | None = None, n_samples: int = 100, *, seed: int = 0) -> torch.Tensor:
        """Predictive ``probs[N, C]`` of the linearised network: ``"mc"``, the mean of ``n_samples`` sampled softmaxes
        (seeded by ``seed``), or ``"probit"`` (MacKay's closed form); ``None``: ``config.link``."""
        link = self.config.link if link is None else link
        generator = torch.Generator(self.device).manual_seed(seed)
        x = x.to(self.device, torch.float32)
        return self.predictor().predict(x, link=link, n_samples=n_samples, generator=generator)

    def log_evidence(self) -> float:
        """The Laplace log Z under its structure; under the exact GGN it needs the training inputs:
        ``self.laplace.ggn_log_evidence(x)`` (what model selection uses)."""
        return self._fitted().log_evidence()

    def posterior(self) -> GaussianBelief:
        return self._fitted().posterior()

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "network": self.network.state_dict(),
            "laplace": self._fitted().state_dict(),
            "predictive": None if self.predictive_laplace is None else self.predictive_laplace.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.laplace = Laplace.from_state_dict(state["laplace"], self.network)
        predictive = state.get("predictive")  # absent from checkpoints written before the option existed
        self.predictive_laplace = None if predictive is None else Laplace.from_state_dict(predictive, self.network)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, device: str | torch.device = "auto") -> LaplaceClassifier:
        model = cls(LaplaceConfig.from_dict(state["config"]), device=device)
        model.load_state_dict(state)
        return model
