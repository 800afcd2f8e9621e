"""Candidate models: build from plain options, fit (or belief-update), score by evidence, compare, reload.

Glue only: every formula lives in ``bayes_models``. Evidence is the Laplace log marginal likelihood of the
candidate's MAP network under one Hessian structure (``EvidenceOptions.subset`` × ``structure``), or VI's ELBO,
which is labelled a lower bound; candidates of both kinds are refused as not comparable.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from bayes_models import (
    DeepEnsemble,
    LaplaceClassifier,
    LaplaceConfig,
    MCDropout,
    MCDropoutConfig,
    MeanFieldVI,
    VIConfig,
    bayes_factor_table,
    prior_from_posterior,
)
from bayes_models.laplace import fit_laplace, laplace_subset
from bayes_models.selection import BayesFactorRow

BELIEF_FAMILIES = ("laplace", "vi")
FAMILIES = ("mc_dropout", "laplace", "vi", "ensemble")


@dataclass(frozen=True)
class ModelOptions:
    """One model's knobs (the ``model`` section of the flows' settings, field for field)."""

    family: Literal["mc_dropout", "laplace", "vi", "ensemble"] = "mc_dropout"
    hidden: int = 128
    depth: int = 2
    dropout: float = 0.5
    steps: int = 500
    update_steps: int | None = None
    """Steps of a belief update, which fits only the new labels; ``None``: ``steps``."""
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
    members: int = 5
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; expected one of {list(FAMILIES)}")


@dataclass(frozen=True)
class EvidenceOptions:
    """The Hessian structure every candidate's Laplace evidence is computed under (one per comparison)."""

    subset: Literal["last_layer", "all"] = "all"
    """Networks that an all-weights KFAC does not cover (convolutions) fall back to the last layer; the evidence
    kind names the subset used."""
    structure: Literal["full", "kfac", "diag"] = "kfac"

    @classmethod
    def for_candidates(cls, subset: str, structure: str, specs: Sequence[CandidateSpec]) -> EvidenceOptions:
        """``subset="auto"``: all weights when every candidate is a ``laplace`` network, whose marginal-likelihood
        training tunes the prior of every layer; else the last layer. A post-hoc all-weights evidence of networks
        trained with a fixed weight decay (MC dropout) switched an MNIST campaign to its smallest candidate (test
        ECE 0.16–0.19), where the last-layer evidence kept the widest (ECE ≤ 0.06)."""
        if subset == "auto":
            subset = "all" if all(s.model.family == "laplace" for s in specs) else "last_layer"
        return cls(subset, structure)


@dataclass(frozen=True)
class CandidateSpec:
    name: str
    model: ModelOptions


@dataclass
class FittedCandidate:
    name: str
    family: str
    model: Any
    log_evidence: float
    evidence_kind: str
    train_seconds: float
    trained_on: dict[str, int]
    """Item id → the label the model was fitted with (what a later belief update compares against)."""
    n_fitted: int
    """Labels fitted this round: all of them when retraining, only the new ones in a belief update."""
    n_relabelled: int = 0
    """Items whose label changed since the posterior was fitted; a belief update then retrains on everything,
    since the old posterior still holds the old labels."""
    previous_classes: int | None = None
    """Outputs of a saved posterior that had another class count than this fit (classes were added since): it
    cannot be a prior for the wider network, so the candidate was retrained on everything instead."""


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
    if m.family == "laplace":
        config = LaplaceConfig(
            **common,
            subset=evidence_options.subset,
            structure=evidence_options.structure,
            training=m.training,
            prior_structure=m.prior_structure,
        )
        return LaplaceClassifier(config, device=m.device)
    if m.family == "vi":
        return MeanFieldVI(VIConfig(**common), device=m.device)
    config = MCDropoutConfig(**common, dropout=m.dropout)
    if m.family == "ensemble":
        return DeepEnsemble(config, members=m.members, device=m.device)
    return MCDropout(config, device=m.device)


def evidence(
    model: Any, family: str, x: torch.Tensor, y: torch.Tensor, evidence_options: EvidenceOptions
) -> tuple[float, str]:
    """``(log Z, kind)``: the model's own evidence where it has one, else a post-hoc Laplace on its MAP network.

    An all-weights KFAC falls back to the last layer for networks it does not cover (convolutions); the kind says
    which subset was used."""
    structure = evidence_options.structure
    if family == "vi":
        return model.log_evidence(), "ELBO (lower bound)"
    if family == "laplace":
        return model.log_evidence(), f"Laplace log Z ({model.laplace.subset}, {structure})"
    networks = [member.network for member in model.members] if family == "ensemble" else [model.network]
    subset = laplace_subset(networks[0], evidence_options.subset, structure)
    laplace_kind = f"Laplace log Z ({subset}, {structure})"
    device = networks[0].parameters().__next__().device
    x, y = x.to(device), y.to(device)
    values = [fit_laplace(net, x, y, subset=subset, structure=structure).log_evidence() for net in networks]
    if family == "ensemble":
        return sum(values) / len(values), f"{laplace_kind}, mean over members"
    return values[0], laplace_kind


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
) -> FittedCandidate:
    """Fit one candidate on ``(x, y)``; with ``previous`` (a :func:`candidate_payload`) update its beliefs on new
    ids only.

    A belief update's evidence is accumulated: ``log p(D) = log p(D_old) + log p(D_new | D_old)``, the second term
    being the Laplace evidence (or ELBO) of the update, so candidates stay comparable on all data seen.
    """
    family = spec.model.family
    start = time.perf_counter()
    labels = dict(zip(ids, y.tolist(), strict=True))
    relabelled = _relabelled(previous, labels) if previous is not None else []
    previous_classes = previous["state"]["config"]["n_classes"] if previous is not None else n_classes
    if previous is None or relabelled or previous_classes != n_classes:
        model = build_model(spec, feature_shape, n_classes, seed, evidence_options).fit(x, y)
        seconds = time.perf_counter() - start
        log_z, kind = evidence(model, family, x, y, evidence_options)
        changed = previous_classes if previous_classes != n_classes else None
        return FittedCandidate(
            spec.name, family, model, log_z, kind, seconds, labels, len(ids), len(relabelled), changed
        )
    model = load_model(previous, spec.model.device)
    seen = previous["trained_on"]
    new = [i for i, item in enumerate(ids) if item not in seen]
    log_z = previous["log_evidence"]
    if new:
        posterior = model.posterior()
        prior = prior_from_posterior(posterior) if family == "laplace" else posterior
        model.fit(x[new], y[new], prior=prior, steps=spec.model.update_steps or spec.model.steps)  # today's options
        log_z += model.log_evidence()
    seconds = time.perf_counter() - start
    kind = previous["evidence_kind"]
    return FittedCandidate(spec.name, family, model, log_z, kind, seconds, {**seen, **labels}, len(new))


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


def rank_candidates(fitted: list[FittedCandidate]) -> list[RankedCandidate]:
    """The Bayes-factor table of comparable candidates, selected (highest log evidence) first."""
    check_comparable(fitted)
    by_name = {f.name: f for f in fitted}
    table = bayes_factor_table({name: f.log_evidence for name, f in by_name.items()})
    return [RankedCandidate(row, by_name[row.candidate]) for row in table]
