"""Model selection by Bayes factors: rank candidates by log evidence and read the evidence against the rest."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class BayesFactorRow:
    """One candidate against the selected one: ``log_bf = log Z_selected − log Z_candidate`` (≥ 0)."""

    candidate: str
    log_evidence: float
    log_bayes_factor: float
    reading: str
    selected: bool


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
