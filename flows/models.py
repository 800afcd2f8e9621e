"""Candidate models of a round: build from settings, fit (or belief-update), score by evidence, save and reload.

Glue only: every formula lives in ``bayes_models``. Evidence is the Laplace log marginal likelihood of the
candidate's MAP network under one Hessian structure (``selection.subset`` × ``selection.structure``), or VI's
ELBO, which is labelled a lower bound; a round refuses to compare the two kinds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bayes_models import (
    DeepEnsemble,
    LaplaceClassifier,
    LaplaceConfig,
    MCDropout,
    MCDropoutConfig,
    MeanFieldVI,
    VIConfig,
    prior_from_posterior,
)
from bayes_models.laplace import fit_laplace, laplace_subset
from flows.settings import ModelSettings, Settings

BELIEF_FAMILIES = ("laplace", "vi")


@dataclass(frozen=True)
class CandidateSpec:
    name: str
    model: ModelSettings


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


def candidate_specs(settings: Settings) -> list[CandidateSpec]:
    """The round's candidates: each ``selection.candidates`` entry applied over ``model``, else ``model`` alone."""
    if not settings.selection.candidates:
        return [CandidateSpec(settings.model.family, settings.model)]
    return [
        CandidateSpec(c.name, settings.model.model_copy(update=c.model_dump(exclude={"name"}, exclude_none=True)))
        for c in settings.selection.candidates
    ]


def build_model(spec: CandidateSpec, feature_shape: tuple[int, ...], n_classes: int, seed: int, settings: Settings):
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
            subset=settings.selection.subset,
            structure=settings.selection.structure,
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


def evidence(model: Any, family: str, x: torch.Tensor, y: torch.Tensor, settings: Settings) -> tuple[float, str]:
    """``(log Z, kind)``: the model's own evidence where it has one, else a post-hoc Laplace on its MAP network.

    An all-weights KFAC falls back to the last layer for networks it does not cover (convolutions); the kind says
    which subset was used."""
    structure = settings.selection.structure
    if family == "vi":
        return model.log_evidence(), "ELBO (lower bound)"
    if family == "laplace":
        return model.log_evidence(), f"Laplace log Z ({model.laplace.subset}, {structure})"
    networks = [member.network for member in model.members] if family == "ensemble" else [model.network]
    subset = laplace_subset(networks[0], settings.selection.subset, structure)
    laplace_kind = f"Laplace log Z ({subset}, {structure})"
    device = networks[0].parameters().__next__().device
    x, y = x.to(device), y.to(device)
    values = [fit_laplace(net, x, y, subset=subset, structure=structure).log_evidence() for net in networks]
    if family == "ensemble":
        return sum(values) / len(values), f"{laplace_kind}, mean over members"
    return values[0], laplace_kind


def fit_candidate(
    spec: CandidateSpec,
    settings: Settings,
    x: torch.Tensor,
    y: torch.Tensor,
    ids: list[str],
    *,
    feature_shape: tuple[int, ...],
    n_classes: int,
    seed: int,
    previous: dict[str, Any] | None = None,
) -> FittedCandidate:
    """Fit one candidate on ``(x, y)``; with ``previous`` (a saved candidate) update its beliefs on new ids only.

    A belief update's evidence is accumulated: ``log p(D) = log p(D_old) + log p(D_new | D_old)``, the second term
    being the Laplace evidence (or ELBO) of the update, so candidates stay comparable on all data seen.
    """
    family = spec.model.family
    start = time.perf_counter()
    labels = dict(zip(ids, y.tolist(), strict=True))
    relabelled = _relabelled(previous, labels) if previous is not None else []
    if previous is None or relabelled:
        model = build_model(spec, feature_shape, n_classes, seed, settings).fit(x, y)
        seconds = time.perf_counter() - start
        log_z, kind = evidence(model, family, x, y, settings)
        return FittedCandidate(spec.name, family, model, log_z, kind, seconds, labels, len(ids), len(relabelled))
    model = load_model(previous, spec.model.device)
    seen = previous["trained_on"]
    new = [i for i, item in enumerate(ids) if item not in seen]
    log_z = previous["log_evidence"]
    if new:
        posterior = model.posterior()
        prior = prior_from_posterior(posterior) if family == "laplace" else posterior
        model.fit(x[new], y[new], prior=prior, steps=spec.model.update_steps or spec.model.steps)  # today's settings
        log_z += model.log_evidence()
    seconds = time.perf_counter() - start
    kind = previous["evidence_kind"]
    return FittedCandidate(spec.name, family, model, log_z, kind, seconds, {**seen, **labels}, len(new))


def _relabelled(previous: dict[str, Any], labels: dict[str, int]) -> list[str]:
    """Ids whose current label differs from the one the saved posterior was fitted with."""
    return [item for item, label in previous["trained_on"].items() if item in labels and labels[item] != label]


_CLASSES = {"mc_dropout": MCDropout, "laplace": LaplaceClassifier, "vi": MeanFieldVI, "ensemble": DeepEnsemble}


def save_candidate(directory: Path, fitted: FittedCandidate, round_: int) -> Path:
    """Write ``<directory>/<candidate>.pt`` (state dict + what it was trained on), the next round's starting point."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{fitted.name}.pt"
    payload = {
        "family": fitted.family,
        "round": round_,
        "trained_on": fitted.trained_on,
        "log_evidence": fitted.log_evidence,
        "evidence_kind": fitted.evidence_kind,
        "state": fitted.model.state_dict(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_candidate(directory: Path, name: str, family: str) -> dict[str, Any] | None:
    """The saved state of candidate ``name`` if there is one of the same family (``weights_only`` load)."""
    path = directory / f"{name}.pt"
    if not path.exists():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    # A checkpoint from before labels were kept beside ids cannot tell a relabelled item: retrain from it.
    return payload if payload["family"] == family and isinstance(payload["trained_on"], dict) else None


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
