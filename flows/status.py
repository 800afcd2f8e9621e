"""A campaign at a glance (``beliefloop status``): where it stands, what its last round measured, what to do next."""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from data.store import LabelStore
from flows.console import NOTHING_QUEUED
from flows.settings import dataset_slug

LAST_METRICS = (
    "n_labeled",
    "n_test",
    "test_accuracy",
    "test_nll",
    "test_ece",
    "stop_set_agreement",
    "n_queued",
    "n_pending",
)
"""The last round's summary values that the status shows (those it has)."""


@dataclass(frozen=True)
class CampaignStatus:
    """Counts of one campaign's label store, its last finished round and the next step to take."""

    campaign: str
    dataset: str
    classes: list[str]
    rounds_done: int
    unfinished_round: int | None
    labels: int
    """Items with a standing label (the latest answer that was not withdrawn)."""
    pending: int
    skipped: int
    pool: int
    """Pool items never queued and unlabelled: what the next round can choose from."""
    test_items: int
    answers_since_last_round: int | None
    last_round: dict[str, Any] = field(default_factory=dict)
    """The last finished round's number, selected model, ``LAST_METRICS``, warnings and stopping note."""
    simulated: bool = False
    """An oracle answers the queue (``beliefloop simulate``): the next round is a simulated one, not a live one."""
    next_step: str = ""


def campaign_status(store: LabelStore, campaign: str, workspace: Path) -> CampaignStatus:
    """Read the campaign's state from its label store; ``workspace`` goes into the suggested commands."""
    dataset = store.dataset_of(campaign)
    statuses = Counter(q.status for q in store.queued(campaign))  # an item is queued at most once
    done = store.round_metrics(campaign)
    unfinished = store.unfinished_rounds(campaign)
    last: dict[str, Any] = {}
    if done:
        summary = done[-1]
        last = {"round": int(summary["round"]), "selected": summary.get("selected")}
        last |= {key: summary[key] for key in LAST_METRICS if summary.get(key) is not None}
        last["warnings"] = summary.get("warnings", [])
        last["stopping_note"] = summary.get("stopping_note")
        last["stopped_when_stable"] = bool(summary.get("stopped_when_stable"))
    status = CampaignStatus(
        campaign=campaign,
        dataset=dataset,
        classes=store.classes(campaign),
        rounds_done=len(done),
        unfinished_round=unfinished[0] if unfinished else None,
        labels=len(store.current_labels(campaign)),
        pending=statuses["pending"],
        skipped=statuses["skipped"],
        pool=len(store.unlabeled_pool(campaign)),
        test_items=len(store.item_rows(campaign, "test")),
        answers_since_last_round=store.answers_since_last_round(campaign),
        last_round=last,
        simulated=store.simulated(campaign),
    )
    step = _next_step(status, workspace)
    stable = last.get("stopping_note")
    if stable and status.unfinished_round is None:
        if last["stopped_when_stable"] and not status.pending:
            step = (
                f"{stable}; {NOTHING_QUEUED}: the campaign is done, unless new data comes (beliefloop ingest; the "
                "next round draws a new stop set) or a round with stopping.when_stable: note asks for more labels"
            )
        elif status.pool or status.pending:
            step = f"{stable}: stop here, or {step}"
    return replace(status, next_step=step)


def simulate_command(campaign: str, dataset: str, workspace: Path, rounds: int) -> str:
    """The command that runs a simulated campaign up to round ``rounds`` (``simulate`` resumes where it stopped)."""
    where = f"--workspace {shlex.quote(str(workspace))} --campaign {shlex.quote(campaign)}"
    return f"beliefloop simulate --dataset {shlex.quote(dataset)} {where} --rounds {rounds}"


def _next_step(s: CampaignStatus, workspace: Path) -> str:
    where = f"--workspace {shlex.quote(str(workspace))}"
    round_command = f"beliefloop round --dataset {shlex.quote(s.dataset)} {where}"
    if s.campaign != dataset_slug(s.dataset):
        round_command += f" --campaign {s.campaign}"
    if s.simulated:
        round_command = simulate_command(s.campaign, s.dataset, workspace, s.unfinished_round or s.rounds_done + 1)
    if s.unfinished_round is not None:
        return f"round {s.unfinished_round} is unfinished (running now, or crashed): {round_command} resumes it"
    if s.simulated and (s.pool or s.pending):
        answers = f" (the oracle answers the {s.pending} pending items)" if s.pending else ""
        return f"run the next round{answers}: {round_command}"
    if s.pending:
        return (
            f"label the {s.pending} pending items: beliefloop annotate {where} (or queue export / label), "
            f"then {round_command}"
        )
    if not s.pool:
        return "the pool is exhausted (every item is labelled, queued or skipped): nothing left to ask"
    return f"run the next round: {round_command}"
