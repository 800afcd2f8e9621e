"""Candidate models of a round from the settings, and each candidate's posterior on disk between rounds.

The candidates' logic (build, fit or belief-update, evidence, comparability) is the learner's
(``learner.candidates``); this module maps ``Settings`` onto its options and keeps the workspace's checkpoints.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from flows.console import console
from flows.settings import Settings
from learner import ActiveLearner, CandidateSpec, EvidenceOptions, FittedCandidate, ModelOptions, candidate_payload
from learner import candidate_specs as learner_candidate_specs


def model_options(settings: Settings) -> ModelOptions:
    return ModelOptions(**settings.model.model_dump())


def evidence_options(settings: Settings) -> EvidenceOptions:
    s = settings.selection
    return EvidenceOptions.for_candidates(
        s.subset, s.structure, candidate_specs(settings), s.prior_tuning, s.exact_ggn, s.condition_on
    )


def candidate_specs(settings: Settings) -> list[CandidateSpec]:
    """The round's candidates: each ``selection.candidates`` entry applied over ``model``, else ``model`` alone."""
    return learner_candidate_specs(model_options(settings), [c.model_dump() for c in settings.selection.candidates])


class CheckpointError(ValueError):
    """A checkpoint that cannot be read back with ``torch.load(weights_only=True)``; the message names the file."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A candidate checkpoint loaded with ``weights_only=True`` (no pickled code runs); :class:`CheckpointError`
    when the file is truncated, corrupt or not a candidate's state."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        reason = re.split(r"\.\s", str(error).strip(), maxsplit=1)[0] or type(error).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt?): {reason}") from None
    if not isinstance(payload, dict) or "family" not in payload:
        raise CheckpointError(f"{path}: not a candidate checkpoint (expected a dict with 'family')")
    return payload


def set_aside(path: Path, error: CheckpointError, *, quiet: bool = False) -> Path:
    """Move an unreadable checkpoint out of the way as ``<name>.corrupt`` (kept for inspection, never loaded) and
    say so unless ``quiet``."""
    aside = path.with_name(f"{path.name}.corrupt")
    path.replace(aside)
    if not quiet:
        console.print(f"warning: {error}; moved to {aside.name}", soft_wrap=True)
    return aside


def save_candidate(directory: Path, fitted: FittedCandidate, round_: int) -> Path:
    """Write ``<directory>/<candidate>.pt`` (state dict + what it was trained on), the next round's starting point.

    The state an earlier round saved becomes ``<candidate>.previous.pt``: this round's starting point, should
    it crash before finishing and run again (see :func:`load_candidate`). An unreadable one is set aside.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{fitted.name}.pt"
    if path.exists():
        try:
            if read_checkpoint(path).get("round", 0) < round_:
                path.replace(_previous(path))
        except CheckpointError as error:
            set_aside(path, error)
    tmp = path.with_suffix(".tmp")
    torch.save(candidate_payload(fitted, round_), tmp)
    tmp.replace(path)
    return path


def load_candidate(directory: Path, name: str, family: str, round_: int) -> dict[str, Any] | None:
    """The state of candidate ``name`` that an earlier round than ``round_`` saved, if of the same family
    (``weights_only`` load): a re-run of a round that crashed after saving starts where its first run started.

    An unreadable checkpoint (truncated by a full disk or a copy) is set aside as ``<name>.corrupt`` and the
    next one is tried (``.previous.pt``, whose posterior the update then extends by every label it has not seen);
    with none left the candidate retrains on every label. Either way the terminal says which.
    """
    path = directory / f"{name}.pt"
    unreadable = False
    for saved in (path, _previous(path)):
        if not saved.exists():
            continue
        try:
            payload = read_checkpoint(saved)
        except CheckpointError as error:
            set_aside(saved, error)
            unreadable = True
            continue
        if payload.get("round", 0) < round_:
            # A checkpoint from before labels were kept beside ids cannot tell a relabelled item: retrain.
            usable = payload["family"] == family and isinstance(payload["trained_on"], dict)
            if unreadable and usable:
                console.print(f"candidate {name}: belief update from {saved.name} (round {payload.get('round', 0)})")
            return payload if usable else None
    if unreadable:
        console.print(f"candidate {name}: no readable posterior left; retraining on every label")
    return None


def prior_checkpoint(path: Path, candidate: str) -> Path:
    """``model.prior_from`` as a checkpoint file: the file itself, or in a workspace the one saved posterior of a
    candidate of this name (``models/<campaign>/candidates/<candidate>.pt``)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"prior_from {path}: no such checkpoint file or workspace")
    found = sorted(path.glob(f"models/*/candidates/{candidate}.pt"))
    if len(found) != 1:
        what = "no saved posterior" if not found else f"{len(found)} saved posteriors ({[str(f) for f in found]})"
        raise ValueError(
            f"prior_from {path}: {what} of candidate {candidate!r} (models/*/candidates/{candidate}.pt); "
            "name the checkpoint file"
        )
    return found[0]


def _previous(path: Path) -> Path:
    return path.with_name(f"{path.stem}.previous.pt")


def learner_for(settings: Settings, *, n_classes: int | None = None) -> ActiveLearner:
    """The in-process learner a campaign with these settings runs: same candidates, acquisition, seeds."""
    a = settings.acquisition
    options = settings.model.model_dump()
    return ActiveLearner(
        options.pop("family"),
        a.name,
        [c.model_dump() for c in settings.selection.candidates],
        settings.update,
        a.samples,
        settings.campaign.seed,
        options.pop("device"),
        subset=settings.selection.subset,
        structure=settings.selection.structure,
        prior_tuning=settings.selection.prior_tuning,
        exact_ggn=settings.selection.exact_ggn,
        condition_on=settings.selection.condition_on,
        criterion=settings.selection.criterion,
        batch_candidates=a.batch_candidates,
        pool_subsample=a.pool_subsample,
        n_classes=n_classes,
        **options,
    )
