"""Model selection: by Bayes factors (rank candidates by log evidence and read the evidence against the rest), or,
when a candidate has no evidence (a deep ensemble), by the negative log likelihood of a held-out validation split."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class BayesFactorRow:
    """One candidate against the selected one.

    ``criterion="evidence"``: ``log_bf = log Z_selected − log Z_candidate`` (≥ 0) with its Kass–Raftery reading.
    ``criterion="validation_nll"``: ranked by ``validation_nll`` (mean nats per held-out item, lower is better);
    evidence values, where a candidate has one, are shown but not compared (``log_bayes_factor`` is None).
    """

    candidate: str
    log_evidence: float | None
    log_bayes_factor: float | None
    reading: str
    selected: bool
    criterion: str = "evidence"
    validation_nll: float | None = None


def kass_raftery(log_bayes_factor: float) -> str:
    """Kass & Raftery (1995) reading of the evidence for the better model, on the 2 ln BF scale.

    ``2 ln BF``: < 2 barely worth mentioning, 2–6 positive, 6–10 strong, > 10 very strong.
    """
    two_ln_bf = 2.0 * abs(log_bayes_factor)
    if two_ln_bf < 2:
        return "barely worth mentioning"
    if two_ln_bf < 6:
        return "positive"
    if two_ln_bf < 10:
        return "strong"
    return "very strong"


def bayes_factor_table(log_evidence: Mapping[str, float]) -> list[BayesFactorRow]:
    """Select the candidate of highest log evidence and compare every candidate with it, best first.

    Ties go to the candidate named first in ``log_evidence`` (the user's order). Evidence values are only
    comparable when computed under one Hessian structure and curvature backend; the caller records which.
    """
    if not log_evidence:
        raise ValueError("bayes_factor_table needs at least one candidate")
    bad = [name for name, value in log_evidence.items() if not math.isfinite(value)]
    if bad:
        raise ValueError(f"log evidence of candidate(s) {bad} is not finite: {[log_evidence[b] for b in bad]}")
    names = sorted(log_evidence, key=lambda name: -log_evidence[name])  # stable: ties keep the user's order
    best = log_evidence[names[0]]
    return [
        BayesFactorRow(
            candidate=name,
            log_evidence=log_evidence[name],
            log_bayes_factor=best - log_evidence[name],
            reading="selected" if i == 0 else kass_raftery(best - log_evidence[name]),
            selected=i == 0,
        )
        for i, name in enumerate(names)
    ]


def validation_table(
    validation_nll: Mapping[str, float], log_evidence: Mapping[str, float | None] | None = None
) -> list[BayesFactorRow]:
    """Select the candidate of lowest validation NLL (mean nats per held-out item), best first; ties go to the
    candidate named first. ``log_evidence`` (None where a candidate has none) is carried into the rows for display
    only: once one candidate lacks an evidence, Bayes factors between the others would not rank all of them."""
    if not validation_nll:
        raise ValueError("validation_table needs at least one candidate")
    bad = [name for name, value in validation_nll.items() if not math.isfinite(value)]
    if bad:
        raise ValueError(f"validation NLL of candidate(s) {bad} is not finite: {[validation_nll[b] for b in bad]}")
    names = sorted(validation_nll, key=lambda name: validation_nll[name])
    best = validation_nll[names[0]]
    return [
        BayesFactorRow(
            candidate=name,
            log_evidence=(log_evidence or {}).get(name),
            log_bayes_factor=None,
            reading="selected" if i == 0 else f"validation NLL +{validation_nll[name] - best:.3g} nats/item",
            selected=i == 0,
            criterion="validation_nll",
            validation_nll=validation_nll[name],
        )
        for i, name in enumerate(names)
    ]
