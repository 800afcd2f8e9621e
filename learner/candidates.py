"""Candidate models: build from plain options, fit (or belief-update), score by evidence, compare, reload.

Glue only: every formula lives in ``bayes_models``. Evidence is the Laplace log marginal likelihood of the
candidate's MAP network under one Hessian structure (``EvidenceOptions.subset`` × ``structure``), or VI's ELBO,
which is labelled a lower bound; candidates of both kinds are refused as not comparable. A deep ensemble has no
evidence (its members are point estimates, and the mean of their log Z is the evidence of no model): a round with
an ensemble among several candidates selects every candidate by its NLL on a held-out validation split instead
(:func:`selection_criterion`, :func:`select_candidates`), then refits the selected one on every label.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from bayes_models import (
    DeepEnsemble,
    ELBOParts,
    LaplaceClassifier,
    LaplaceConfig,
    MCDropout,
    MCDropoutConfig,
    MeanFieldVI,
    VIConfig,
    bayes_factor_table,
    prior_from_posterior,
)
from bayes_models.laplace import (
    CONDITIONED,
    Laplace,
    PriorTuning,
    fit_laplace,
    laplace_subset,
    tune_prior_on_validation,
)
from bayes_models.metrics import nll
from bayes_models.priors import check_prior_shapes
from bayes_models.selection import BayesFactorRow, validation_table
from bayes_models.training import StepProgress, reporting_steps
from learner.query import predict_proba

BELIEF_FAMILIES = ("laplace", "vi")
FAMILIES = ("mc_dropout", "laplace", "vi", "ensemble")
NO_EVIDENCE_FAMILIES = ("ensemble",)
NO_EVIDENCE = "none (a deep ensemble has no marginal likelihood)"
VALIDATION_FRACTION = 0.2
"""Share of the labels held out to select among candidates when one has no evidence."""


@dataclass(frozen=True)
class ModelOptions:
    """One model's knobs (the ``model`` section of the flows' settings, field for field, plus the learner-only
    step schedule ``epochs`` / ``min_steps``)."""

    family: Literal["mc_dropout", "laplace", "vi", "ensemble"] = "mc_dropout"
    hidden: int = 128
    depth: int = 2
    dropout: float = 0.5
    augment: Literal["auto", "none", "shift_rotate"] = "auto"
    """MC dropout and ensembles on images: train on minibatches shifted and rotated at random
    (``bayes_models.augment``); ``auto``: on for image features, off for vectors (an embedding, a table)."""
    steps: int = 500
    update_steps: int | None = None
    """Steps of a belief update, which fits only the new labels; ``None``: ``steps``."""
    epochs: float | None = None
    """A step schedule by passes over the data instead of the fixed ``steps`` / ``update_steps``: a fit on ``n``
    labels (all of them when retraining, the new ones in a belief update or fine-tune) trains
    ``max(min_steps, ⌈epochs · n / batch_size⌉)`` steps; ``None``: the fixed counts."""
    min_steps: int = 1
    """With ``epochs``: the fewest steps of any fit (an update on a few new labels still moves)."""
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    """Adam's weight decay of MAP training (every family but ``laplace`` with ``training: marglik``)."""
    training: Literal["marglik", "map"] = "marglik"
    """How the ``laplace`` family trains: ``marglik`` fits the network and its prior precisions together by
    maximising the all-weights KFAC evidence (Immer et al. 2021); ``map`` trains with ``weight_decay`` and tunes the
    prior post hoc."""
    prior_structure: Literal["layerwise", "scalar"] = "layerwise"
    """Marglik training: one prior precision per layer, or one for all weights."""
    predictive: Literal["last_layer_kfac", "last_layer_full", "evidence"] = "last_layer_kfac"
    """The ``laplace`` posterior a network trained under an explicit prior predicts with (``LaplaceConfig.predictive``):
    the last layer's (KFAC or full GGN) under that prior, or the evidence's all-weights one."""
    predictive_prior: Literal["retuned", "trained"] = "retuned"
    """The last-layer predictive's prior precision after marglik training (``LaplaceConfig.predictive_prior``):
    re-tuned on that layer's own evidence, or the trained all-weights prior's."""
    members: int = 5
    device: str = "auto"
    prior_std: float | None = None
    """A stated Gaussian prior std of every weight (``laplace``, ``vi``); ``None``: the family's (laplace: tuned)."""
    prior_precision: float | None = None
    """The same as a precision ``1 / std²`` (give one of the two)."""
    prior_layer_std: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Prior std per layer group (a module name or dotted prefix: ``{"head": 2.0, "features.0": 0.5}``)."""
    prior_layer_precision: Mapping[str, float] = dataclasses.field(default_factory=dict)
    prior_mixture: Mapping[str, float] | None = None
    """``vi``: Blundell et al.'s scale mixture ``{"pi": π, "sigma1": σ1, "sigma2": σ2}`` on every weight."""
    prior_from: str | None = None
    """A checkpoint holding a saved posterior of an earlier campaign (a candidate ``.pt``): the informative prior
    of a fresh fit (``laplace``, ``vi``; same family and layer shapes)."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; expected one of {list(FAMILIES)}")
        if self.prior_std is not None and self.prior_precision is not None:
            raise ValueError("give prior_std or prior_precision, not both")
        values = {"prior_std": self.prior_std, "prior_precision": self.prior_precision}
        for key in ("prior_layer_std", "prior_layer_precision"):
            values |= {f"{key}.{group}": v for group, v in (getattr(self, key) or {}).items()}
        bad = {key: v for key, v in values.items() if v is not None and not v > 0}
        if bad:
            raise ValueError(f"prior std and precision must be positive, got {bad}")
        both = sorted(set(self.prior_layer_std or {}) & set(self.prior_layer_precision or {}))
        if both:
            raise ValueError(f"layer group(s) {both} given both a prior std and a prior precision")
        stated = self.stated_stds() != (None, ())
        if stated and self.family not in BELIEF_FAMILIES:
            raise ValueError(f"a stated Gaussian prior needs family laplace or vi, got {self.family!r}")
        if self.prior_mixture is not None and self.family != "vi":
            raise ValueError(f"the scale-mixture prior needs family vi, got {self.family!r}")
        if self.prior_from is not None and self.family not in BELIEF_FAMILIES:
            raise ValueError(f"prior_from needs a posterior family (laplace or vi), got {self.family!r}")
        if self.augment not in ("auto", "none", "shift_rotate"):
            raise ValueError(f"unknown augment {self.augment!r}; expected auto, none or shift_rotate")
        if self.augment == "shift_rotate" and self.family not in ("mc_dropout", "ensemble"):
            raise ValueError(f"augment: shift_rotate needs family mc_dropout or ensemble, got {self.family!r}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be positive (or None for fixed steps), got {self.epochs}")
        if self.min_steps < 1:
            raise ValueError(f"min_steps must be at least 1, got {self.min_steps}")

    def fit_steps(self, n: int, *, update: bool = False) -> int:
        """Optimiser steps of a fit on ``n`` labels; ``update``: a belief update or fine-tune (new labels only)."""
        if self.epochs is not None:
            return max(self.min_steps, math.ceil(self.epochs * n / self.batch_size))
        return self.update_steps if update and self.update_steps is not None else self.steps

    def stated_stds(self) -> tuple[float | None, tuple[tuple[str, float], ...]]:
        """The stated Gaussian prior as stds: every weight's (or ``None``) and ``(group, std)`` per layer group."""
        std = self.prior_std if self.prior_precision is None else self.prior_precision**-0.5
        layers = {**(self.prior_layer_std or {})}
        layers |= {group: p**-0.5 for group, p in (self.prior_layer_precision or {}).items()}
        return std, tuple(sorted(layers.items()))


@dataclass(frozen=True)
class EvidenceOptions:
    """The Hessian structure every candidate's Laplace evidence is computed under (one per comparison)."""

    subset: Literal["last_layer", "all"] = "all"
    """Networks that an all-weights KFAC does not cover (convolutions) fall back to the last layer; the evidence
    kind names the subset used."""
    structure: Literal["full", "kfac", "diag"] = "kfac"
    prior_tuning: Literal["evidence", "validation"] = "evidence"
    """How a ``laplace`` candidate's prior precision is tuned: on the evidence (marglik or post hoc), or, after that,
    scaled by the factor of lowest NLL on a held-out validation split (:func:`fit_candidate`). A stated prior, a
    ``prior_from`` and a belief update are never tuned."""
    exact_ggn: bool = True
    """The evidence's log determinant under the exact GGN, computed in the labels' space (``Laplace.ggn_log_evidence``)
    instead of under ``structure``, where it applies (``nn.Linear`` layers, an isotropic prior: not a belief update's
    increment). KFAC's determinant penalised width and depth so much that the evidence picked networks that predict
    worse (``benchmarks/evidence.py``)."""
    condition_on: float = CONDITIONED
    """With the exact GGN: compare ``log p(D₂ | D₁)``, the evidence of the labels outside a seeded ``condition_on``
    fraction ``D₁`` of them given ``D₁`` (``Laplace.ggn_conditional_log_evidence``; Lotfi et al. 2022), the same
    ``D₁`` for every candidate; 0: the marginal likelihood ``log Z``. ``log Z`` also scores how well each prior
    alone predicts the first labels, and picked worse-generalising networks on MNIST (``benchmarks/evidence.py``)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.condition_on < 1.0:
            raise ValueError(f"condition_on must be a fraction in [0, 1), got {self.condition_on}")

    @classmethod
    def for_candidates(
        cls,
        subset: str,
        structure: str,
        specs: Sequence[CandidateSpec],
        prior_tuning: str = "evidence",
        exact_ggn: bool = True,
        condition_on: float = CONDITIONED,
    ) -> EvidenceOptions:
        """``subset="auto"``: all weights when every candidate is a ``laplace`` network, whose marginal-likelihood
        training tunes the prior of every layer; else the last layer. A post-hoc all-weights evidence of networks
        trained with a fixed weight decay (MC dropout) switched an MNIST campaign to its smallest candidate (test
        ECE 0.16–0.19), where the last-layer evidence kept the widest (ECE ≤ 0.06)."""
        if subset == "auto":
            subset = "all" if all(s.model.family == "laplace" for s in specs) else "last_layer"
        return cls(subset, structure, prior_tuning, exact_ggn, condition_on)


@dataclass(frozen=True)
class CandidateSpec:
    name: str
    model: ModelOptions


@dataclass
class FittedCandidate:
    name: str
    family: str
    model: Any
    log_evidence: float | None
    """None for a family without one (a deep ensemble; ``evidence_kind`` is :data:`NO_EVIDENCE`)."""
    evidence_kind: str
    train_seconds: float
    trained_on: dict[str, int]
    """Item id → the label the model was fitted with (what a later belief update compares against)."""
    n_fitted: int
    """Labels fitted this round: all of them when retraining, only the new ones in a belief update."""
    n_relabelled: int = 0
    """Items whose label changed since the posterior was fitted; a belief update then retrains on everything,
    since the old posterior still holds the old labels."""
    validation_nll: float | None = None
    """Mean NLL (nats per item) of the held-out validation split, when the round selects by it."""
    elbo: ELBOParts | None = None
    """VI: the ELBO's expected log likelihood and KL of this round's fit (of a belief update: its new data)."""
    prior_tuning: PriorTuning | None = None
    """``laplace`` with ``prior_tuning="validation"``: the validation grid search that scaled the prior."""
    previous_classes: int | None = None
    """Outputs of a saved posterior that had another class count than this fit (classes were added since): it
    cannot be a prior for the wider network, so the candidate was retrained on everything instead."""
    steps: int | None = None
    """Optimiser steps of this round's fit (:meth:`ModelOptions.fit_steps`; per ensemble member; 0 when an update
    had no new labels); ``None`` when restored from a state dict that did not record them."""


@dataclass(frozen=True)
class RankedCandidate:
    """A fitted candidate with its row of the Bayes-factor table."""

    row: BayesFactorRow
    fitted: FittedCandidate


def candidate_specs(base: ModelOptions, candidates: list[Mapping[str, Any]] | None = None) -> list[CandidateSpec]:
    """Each ``candidates`` entry (``name`` plus the option keys it changes) applied over ``base``, else ``base``
    alone, named after its family."""
    if not candidates:
        return [CandidateSpec(base.family, base)]
    specs = []
    for entry in candidates:
        changes = {key: value for key, value in entry.items() if key != "name" and value is not None}
        specs.append(CandidateSpec(entry["name"], dataclasses.replace(base, **changes)))
    names = [s.name for s in specs]
    if len(set(names)) < len(names):
        raise ValueError(f"candidate names must be unique; got {names}")
    return specs


def build_model(
    spec: CandidateSpec, feature_shape: tuple[int, ...], n_classes: int, seed: int, evidence_options: EvidenceOptions
):
    m = spec.model
    common = dict(
        feature_shape=feature_shape,
        n_classes=n_classes,
        hidden=m.hidden,
        depth=m.depth,
        steps=m.steps,
        batch_size=m.batch_size,
        lr=m.lr,
        weight_decay=m.weight_decay,
        seed=seed,
        update_steps=m.update_steps,
    )
    std, layers = m.stated_stds()
    if m.family == "laplace":
        config = LaplaceConfig(
            **common,
            subset=evidence_options.subset,
            structure=evidence_options.structure,
            training=m.training,
            prior_structure=m.prior_structure,
            predictive=m.predictive,
            predictive_prior=m.predictive_prior,
            prior_std=std,
            layer_prior_std=layers,
        )
        return LaplaceClassifier(config, device=m.device)
    if m.family == "vi":
        mixture = m.prior_mixture
        priors = {} if mixture is None else {"prior": "scale_mixture", "mixture_pi": mixture["pi"]}
        if mixture is not None:
            priors |= {"mixture_sigma1": mixture["sigma1"], "mixture_sigma2": mixture["sigma2"]}
        layer_priors = tuple((group, 0.0, s) for group, s in layers)
        config = VIConfig(**common, **priors, prior_std=1.0 if std is None else std, layer_priors=layer_priors)
        return MeanFieldVI(config, device=m.device)
    augment = m.augment == "shift_rotate" or (m.augment == "auto" and len(feature_shape) == 3)
    config = MCDropoutConfig(**common, dropout=m.dropout, augment=augment)
    if m.family == "ensemble":
        return DeepEnsemble(config, members=m.members, device=m.device)
    return MCDropout(config, device=m.device)


class Evidence(NamedTuple):
    log_z: float | None
    """None when the family has no evidence (a deep ensemble)."""
    kind: str


def evidence(model: Any, family: str, x: torch.Tensor, y: torch.Tensor, evidence_options: EvidenceOptions) -> Evidence:
    """The model's own evidence where it has one, else a post-hoc Laplace on its MAP network; none for a deep
    ensemble, whose members are M point estimates of no one model (the mean of their log Z is no evidence).

    An all-weights KFAC falls back to the last layer for networks it does not cover (convolutions); the kind says
    which subset was used."""
    structure = evidence_options.structure
    if family in NO_EVIDENCE_FAMILIES:
        return Evidence(None, NO_EVIDENCE)
    if family == "vi":
        return Evidence(model.log_evidence(), "ELBO (lower bound)")
    if family == "laplace":
        return laplace_evidence(model.laplace, x, y, evidence_options)
    subset = laplace_subset(model.network, evidence_options.subset, structure)
    device = next(model.network.parameters()).device
    laplace = fit_laplace(model.network, x.to(device), y.to(device), subset=subset, structure=structure)
    return laplace_evidence(laplace, x, y, evidence_options)


def laplace_evidence(laplace: Laplace, x: torch.Tensor, y: torch.Tensor, evidence_options: EvidenceOptions) -> Evidence:
    """A fitted Laplace's evidence: under the exact GGN where asked and where it applies — conditioned on a fraction
    of the labels unless ``condition_on`` is 0 — else ``log Z`` under its structure. Above ``kernel.MAX_ROWS`` rows
    the exact GGN's determinant is taken in blocks: a bound of ``log Z``, an approximation of the conditional; the
    kind says so."""
    if evidence_options.exact_ggn:
        x = x.to(laplace.device, laplace.dtype)
        fraction = evidence_options.condition_on
        found = (
            laplace.ggn_conditional_log_evidence(x, y, conditioned=fraction)
            if fraction and x.shape[0] >= 2
            else laplace.ggn_log_evidence(x)
        )
        if found is not None:
            conditioned, notes = found.log_det.conditioned, [laplace.subset, "exact GGN"]
            if conditioned:
                notes.append(f"D₁ = {fraction:.0%} of the labels")
            if not found.log_det.exact:
                notes.append(f"{'approximated in' if conditioned else 'lower bound of'} {found.log_det.blocks} blocks")
            quantity = "log p(D₂|D₁)" if conditioned else "log Z"
            return Evidence(found.log_evidence, f"Laplace {quantity} ({', '.join(notes)})")
    return Evidence(laplace.log_evidence(), f"Laplace log Z ({laplace.subset}, {laplace.structure})")


CRITERIA = ("auto", "validation_nll")
"""What a round selects by: ``auto`` (the evidence when every candidate has one, else validation NLL) or
``validation_nll`` (held-out NLL whenever there is more than one candidate). The default evidence, the labels D₂
given D₁ at weights trained on all of them D₂ included, stays near 0 nats per D₂ item for networks that fit their
labels (breast_cancer and wine, 40 and 100 labels: −0.002 to −0.06 nats against test NLLs of 0.01–0.27), so it
ranks the candidates by how well they memorise; held-out NLL picked the candidate of lowest test NLL in 10 of those
16 cases against the evidence's 4 (mean regret 0.011 against 0.027 nats per test item, README)."""


def selection_criterion(
    specs: Sequence[CandidateSpec], criterion: str = "auto"
) -> Literal["evidence", "validation_nll", "none"]:
    """How a round with these candidates selects under ``criterion`` (:data:`CRITERIA`): with ``auto``,
    ``evidence`` (Bayes factors) when every candidate has one, ``none`` for a single candidate without one (nothing
    to compare), else ``validation_nll`` for all of them; ``validation_nll`` whenever there are two or more."""
    if criterion not in CRITERIA:
        raise ValueError(f"selection criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    if criterion == "validation_nll" and len(specs) > 1:
        return "validation_nll"
    if all(s.model.family not in NO_EVIDENCE_FAMILIES for s in specs):
        return "evidence"
    return "none" if len(specs) == 1 else "validation_nll"


def validation_rows(ids: Sequence[str], seed: int, fraction: float = VALIDATION_FRACTION) -> np.ndarray:
    """Sorted positions of the held-out validation items: a seeded ``fraction`` of the labels (at least one, and
    at least one left to fit), chosen by item id, so the same items whatever order the labels come in."""
    n = len(ids)
    if n < 2:
        raise ValueError(f"selecting by validation NLL needs at least 2 labels to split, got {n}")
    n_held = min(n - 1, max(1, round(fraction * n)))
    by_id = np.asarray(sorted(range(n), key=lambda i: ids[i]), dtype=np.int64)
    return np.sort(by_id[np.random.default_rng([seed, 7]).permutation(n)[:n_held]])


def fit_candidate(
    spec: CandidateSpec,
    evidence_options: EvidenceOptions,
    x: torch.Tensor,
    y: torch.Tensor,
    ids: list[str],
    *,
    feature_shape: tuple[int, ...],
    n_classes: int,
    seed: int,
    previous: dict[str, Any] | None = None,
    held_out: np.ndarray | None = None,
    samples: int = 20,
    prior_payload: dict[str, Any] | None = None,
    update: Literal["belief", "finetune"] = "belief",
    progress: StepProgress | None = None,
) -> FittedCandidate:
    """Fit one candidate on ``(x, y)``; with ``previous`` (a :func:`candidate_payload`) update its beliefs on new
    ids only (``update="finetune"``: fine-tune it on them without a prior instead, a ``laplace``-only baseline whose
    posterior and evidence then hold the new labels alone, :meth:`LaplaceClassifier.finetune`).

    ``progress(done, total)`` is told the training steps done so far, counted over every training loop of the fit
    (an ensemble's members, a validation fit), ``total`` growing when a loop starts; it changes nothing in the fit.

    A belief update's evidence is accumulated: ``log p(D) = log p(D_old) + log p(D_new | D_old)``, the second term
    being the Laplace evidence (or ELBO) of the update, so candidates stay comparable on all data seen.
    ``held_out`` (positions, :func:`validation_rows`): fit on the other rows and report the mean NLL of the
    held-out ones under the predictive the test metrics use (:func:`.query.predict_proba`: ``samples`` draws seeded
    by ``seed``, or a Laplace model's probit).
    ``prior_payload`` (:func:`load_checkpoint` of ``spec.model.prior_from``): a fresh fit starts from that saved
    posterior of an earlier campaign as its prior, for ``spec.model.steps`` steps on all of ``(x, y)``.
    """
    if progress is not None:  # the same fit, observed: every argument but progress (locals() holds just them here)
        arguments = {name: value for name, value in locals().items() if name != "progress"}
        with reporting_steps(_cumulative(progress)):
            return fit_candidate(**arguments)
    family = spec.model.family
    start = time.perf_counter()
    if held_out is not None:
        if previous is not None:
            raise ValueError("a held-out validation split is for retraining; a belief update has none")
        keep = np.ones(len(ids), dtype=bool)
        keep[held_out] = False
        rows, held = torch.from_numpy(np.flatnonzero(keep)), torch.from_numpy(np.asarray(held_out, dtype=np.int64))
        fitted = fit_candidate(
            spec,
            evidence_options,
            x[rows],
            y[rows],
            [ids[i] for i in rows.tolist()],
            feature_shape=feature_shape,
            n_classes=n_classes,
            seed=seed,
            prior_payload=prior_payload,
        )
        fitted.validation_nll = nll(predict_proba(fitted.model, x[held], samples, seed=seed), y[held])
        fitted.train_seconds = time.perf_counter() - start
        return fitted
    labels = dict(zip(ids, y.tolist(), strict=True))
    relabelled = _relabelled(previous, labels) if previous is not None else []
    previous_classes = previous["state"]["config"]["n_classes"] if previous is not None else n_classes
    if previous is None or relabelled or previous_classes != n_classes:
        steps = spec.model.fit_steps(len(ids))
        spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, steps=steps))
        model = build_model(spec, feature_shape, n_classes, seed, evidence_options)
        tuning = None
        if prior_payload is not None:
            _start_from(model, spec, prior_payload)
            model.fit(x, y, prior=_prior_of(model, family), steps=spec.model.steps)
        elif _tunes_on_validation(spec, evidence_options):
            build = functools.partial(build_model, spec, feature_shape, n_classes, seed, evidence_options)
            tuning = tune_prior_scale(build, x, y, validation_rows(ids, seed))
            model.fit(x, y)
            model.scale_prior(tuning.scale)
        else:
            model.fit(x, y)
        seconds = time.perf_counter() - start
        log_z, kind = evidence(model, family, x, y, evidence_options)
        return FittedCandidate(
            spec.name,
            family,
            model,
            log_z,
            kind,
            seconds,
            labels,
            len(ids),
            len(relabelled),
            elbo=_elbo(model),
            prior_tuning=tuning,
            previous_classes=previous_classes if previous_classes != n_classes else None,
            steps=steps,
        )
    if update == "finetune" and family != "laplace":
        raise ValueError(f"update='finetune' is a laplace-family baseline; candidate {spec.name!r} is {family!r}")
    model = load_model(previous, spec.model.device)
    seen = previous["trained_on"]
    new = [i for i, item in enumerate(ids) if item not in seen]
    log_z = previous["log_evidence"]
    steps = spec.model.fit_steps(len(new), update=True) if new else 0
    if new and update == "finetune":
        log_z = model.finetune(x[new], y[new], steps=steps).log_evidence()  # of the new labels alone
    elif new:
        model.fit(x[new], y[new], prior=_prior_of(model, family), steps=steps)
        log_z += model.log_evidence()
    seconds = time.perf_counter() - start
    kind = previous["evidence_kind"]
    increments = " + updates under the structure's"  # a belief update's prior is a posterior: no kernel form
    if new and update == "belief" and "exact GGN" in kind and increments not in kind:
        kind += increments
    elbo = _elbo(model) if new else None
    return FittedCandidate(
        spec.name, family, model, log_z, kind, seconds, {**seen, **labels}, len(new), elbo=elbo, steps=steps
    )


def _cumulative(progress: StepProgress) -> StepProgress:
    """``progress`` told the steps of successive training loops as one count: a loop restarting at step 1 adds
    its steps after those of the loops before it."""
    before, last = 0, 0

    def report(step: int, steps: int) -> None:
        nonlocal before, last
        if step <= last:  # a new loop
            before += last
        last = step
        progress(before + step, before + steps)

    return report


def _tunes_on_validation(spec: CandidateSpec, evidence_options: EvidenceOptions) -> bool:
    m = spec.model
    return (
        evidence_options.prior_tuning == "validation"
        and m.family == "laplace"
        and m.stated_stds() == (None, ())
        and m.prior_from is None
    )


def tune_prior_scale(
    build: Callable[[], LaplaceClassifier], x: torch.Tensor, y: torch.Tensor, held_out: np.ndarray
) -> PriorTuning:
    """The validation grid search of the prior's scale: a new candidate (``build()``) fitted without the held-out
    rows (its prior tuned on the evidence as usual), then :func:`tune_prior_on_validation` of the Laplace it predicts
    with on them. The caller applies the scale to the candidate fitted on every label (its evidence's prior and its
    predictor's), so no label is left out of the final model."""
    held = torch.from_numpy(held_out)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[held] = False
    split = build().fit(x[keep], y[keep])
    return tune_prior_on_validation(split.predictor(), x[held].to(split.device), y[held].to(split.device))


def _prior_of(model: Any, family: str) -> Any:
    """The model's posterior in the form its ``fit(prior=...)`` takes."""
    posterior = model.posterior()
    return prior_from_posterior(posterior) if family == "laplace" else posterior


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A saved candidate (:func:`candidate_payload`, e.g. ``models/<campaign>/candidates/<name>.pt`` of a
    workspace), loaded with ``weights_only=True``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as error:  # missing, or not a weights-only torch file
        raise ValueError(f"prior_from {path}: cannot load a saved posterior ({error})") from None


def _start_from(model: Any, spec: CandidateSpec, payload: dict[str, Any]) -> None:
    """Load a saved posterior into ``model`` after checking that it is of the same family and layer shapes."""
    source = spec.model.prior_from or "the given checkpoint"
    if payload.get("family") != spec.model.family:
        raise ValueError(
            f"prior from {source}: the saved posterior is of family {payload.get('family')!r}, "
            f"expected {spec.model.family!r} (candidate {spec.name!r})"
        )
    check_prior_shapes(payload["state"]["network"], model.network.state_dict(), source)
    try:
        model.load_state_dict(payload["state"])
    except ValueError as error:  # e.g. a Laplace of another subset or structure
        raise ValueError(f"prior from {source}: {error}") from None


def _elbo(model: Any) -> ELBOParts | None:
    return model.elbo_terms if isinstance(model, MeanFieldVI) else None


def _relabelled(previous: dict[str, Any], labels: dict[str, int]) -> list[str]:
    """Ids whose current label differs from the one the saved posterior was fitted with."""
    return [item for item, label in previous["trained_on"].items() if item in labels and labels[item] != label]


_CLASSES = {"mc_dropout": MCDropout, "laplace": LaplaceClassifier, "vi": MeanFieldVI, "ensemble": DeepEnsemble}


def candidate_payload(fitted: FittedCandidate, round_: int) -> dict[str, Any]:
    """A candidate as plain values (state dict + what it was trained on): the next round's starting point,
    loadable with ``torch.load(..., weights_only=True)``."""
    return {
        "family": fitted.family,
        "round": round_,
        "trained_on": fitted.trained_on,
        "log_evidence": fitted.log_evidence,
        "evidence_kind": fitted.evidence_kind,
        "validation_nll": fitted.validation_nll,
        "prior_tuning": None if fitted.prior_tuning is None else dataclasses.asdict(fitted.prior_tuning),
        "state": fitted.model.state_dict(),
    }


def load_model(payload: dict[str, Any], device: str) -> Any:
    return _CLASSES[payload["family"]].from_state_dict(payload["state"], device=device)


def check_comparable(candidates: list[FittedCandidate]) -> None:
    """Bayes factors need one kind of evidence; a non-finite evidence names its candidate."""
    kinds = {c.evidence_kind for c in candidates}
    if len(kinds) > 1:
        listing = ", ".join(f"{c.name}: {c.evidence_kind}" for c in candidates)
        raise ValueError(f"candidates' evidence values are not comparable ({listing}); use one family kind per round")
    for c in candidates:
        if not math.isfinite(c.log_evidence):
            raise ValueError(f"candidate {c.name!r} has a non-finite log evidence ({c.log_evidence})")


def rank_candidates(fitted: list[FittedCandidate], by_validation: bool = False) -> list[RankedCandidate]:
    """The candidates, selected first: by Bayes factors when every one has a (comparable) evidence and
    ``by_validation`` is not asked for, else by validation NLL, which every candidate then needs
    (:func:`fit_candidate` with ``held_out``)."""
    by_name = {f.name: f for f in fitted}
    if not by_validation and all(f.log_evidence is not None for f in fitted):
        check_comparable(fitted)
        table = bayes_factor_table({name: f.log_evidence for name, f in by_name.items()})
    elif len(fitted) == 1:
        only = fitted[0]
        row = BayesFactorRow(only.name, None, None, "selected (the only candidate)", True, "none", only.validation_nll)
        table = [row]
    else:
        missing = [f.name for f in fitted if f.validation_nll is None]
        if missing:
            no_evidence = [f.name for f in fitted if f.log_evidence is None]
            raise ValueError(
                f"candidate(s) {no_evidence} have no evidence, so candidates are compared by validation NLL, but "
                f"{missing} were fitted without a held-out split (see learner.candidates.select_candidates)"
            )
        table = validation_table(
            {name: f.validation_nll for name, f in by_name.items()},
            {name: f.log_evidence for name, f in by_name.items()},
        )
    return [RankedCandidate(row, by_name[row.candidate]) for row in table]


FitAll = Callable[[Sequence[CandidateSpec], "np.ndarray | None"], list[FittedCandidate]]


def select_candidates(
    specs: Sequence[CandidateSpec], fit_all: FitAll, ids: Sequence[str], seed: int, criterion: str = "auto"
) -> list[RankedCandidate]:
    """Fit every candidate with ``fit_all(specs, held_out)`` and rank them by :func:`selection_criterion`.

    By validation NLL: every candidate is fitted without the held-out items (:func:`validation_rows`), then the
    selected one is fitted again on every label (its ``validation_nll`` and the time of both fits kept); the
    others stay as fitted for the comparison. ``fit_all`` lets a caller fit concurrently (Prefect tasks)."""
    held_out = validation_rows(ids, seed) if selection_criterion(specs, criterion) == "validation_nll" else None
    ranked = rank_candidates(fit_all(specs, held_out), by_validation=held_out is not None)
    if held_out is None:
        return ranked
    best = ranked[0]
    [refit] = fit_all([next(s for s in specs if s.name == best.fitted.name)], None)
    refit.validation_nll = best.fitted.validation_nll
    refit.train_seconds += best.fitted.train_seconds
    return [RankedCandidate(best.row, refit), *ranked[1:]]
