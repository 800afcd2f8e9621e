"""Scheduled labeling rounds: the live round served as a Prefect deployment on a cron or interval schedule.

A scheduled run does a round only when people answered something since the last round (or ``force``): a schedule
that fires over a weekend must not retrain on the same labels and queue more items nobody asked for. The
deployment's concurrency limit of one keeps its own runs from overlapping, and the campaign's round lock
(``data.round_lock``) any other round: a scheduled run that finds one running skips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from data.round_lock import RoundInProgress
from flows.campaign_setup import open_label_store, prepare_campaign
from flows.rounds import run_round
from flows.settings import load_settings


@flow(name="scheduled_round", flow_run_name="{campaign} · scheduled round")
def scheduled_round(
    campaign: str, overrides: dict[str, Any], params: str | None = None, force: bool = False
) -> dict[str, Any]:
    """One live round of ``campaign`` (settings: ``params`` file, then ``overrides``) if there are new answers.

    Returns the round's summary, or ``{"skipped": True, ...}`` saying why nothing was done."""
    logger = get_run_logger()
    settings = load_settings(Path(params) if params else None, overrides)
    store = open_label_store(settings)
    try:
        prepare_campaign(settings, store, simulate=False)
        new = store.answers_since_last_round(campaign)
        if new == 0 and not force and not store.unfinished_rounds(campaign):
            done = len(store.round_metrics(campaign))
            logger.info("%s: no new answers since round %d; nothing to do (force=True runs anyway)", campaign, done)
            return {"skipped": True, "reason": "no new answers", "last_round": done}
    finally:
        store.close()
    try:
        return run_round(settings)
    except RoundInProgress as busy:  # a person's `beliefloop round`, or a run of another schedule
        logger.info("%s", busy)
        return {"skipped": True, "reason": "a round is running"}


def serve_rounds(
    campaign: str,
    overrides: dict[str, Any],
    *,
    params: Path | None,
    interval: float | None,
    cron: str | None,
    force: bool,
) -> None:
    """Serve ``scheduled_round`` as the deployment ``<campaign>-rounds`` until SIGTERM or Ctrl-C."""
    scheduled_round.serve(
        name=f"{campaign}-rounds",
        interval=interval,
        cron=cron,
        parameters={
            "campaign": campaign,
            "overrides": overrides,
            "params": str(params.resolve()) if params else None,
            "force": force,
        },
        tags=[campaign, "beliefloop"],
        global_limit=1,
        print_starting_message=False,
    )
