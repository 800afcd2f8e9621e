"""``beliefloop doctor``: check a workspace and repair what is safe to repair.

Checks, per campaign of the label store: the queue holds an item at most once per round; no item with a standing
answer is still ``pending``; every label names a known item; no round is left ``running``; no MLflow round run is
left RUNNING; every candidate checkpoint loads with ``weights_only=True``; and every feature store of the workspace
opens (its files match ``meta.json``'s shapes and dtypes), hashes to its recorded ``content_hash`` and holds each
item of the label store at the item's row.

``repair`` changes only what loses nothing: a round left ``running`` becomes ``failed`` (the next round command
re-runs it), its MLflow run FAILED (a round left RUNNING whose round is done becomes FINISHED), a pending queue
entry of an answered item becomes ``labeled``, an unreadable checkpoint is set aside as ``<name>.pt.corrupt`` (the
next round falls back or retrains). A damaged feature store, unknown items and duplicate queue rows are reported,
never changed: they need the user's data. A round whose process still holds the campaign's round lock
(``data.round_lock``) is running, not abandoned, and is left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from data.feature_store import FeatureStoreError, open_feature_store
from data.round_lock import round_running_elsewhere
from data.store import LabelStore, items, labels, queue
from flows.settings import Settings


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``status`` is ``ok``, ``problem`` or ``repaired``; ``detail`` says what and why."""

    check: str
    subject: str
    status: str
    detail: str


@dataclass(frozen=True)
class DoctorReport:
    findings: list[Finding]

    @property
    def problems(self) -> list[Finding]:
        """Findings still wrong after the run (repaired ones are not)."""
        return [f for f in self.findings if f.status == "problem"]


class _Checks:
    """Collects findings; ``fix`` runs a repair when repairing, else records the problem and what would fix it."""

    def __init__(self, repair: bool) -> None:
        self.repair = repair
        self.findings: list[Finding] = []

    def ok(self, check: str, subject: str, detail: str) -> None:
        self.findings.append(Finding(check, subject, "ok", detail))

    def problem(self, check: str, subject: str, detail: str) -> None:
        self.findings.append(Finding(check, subject, "problem", detail))

    def fix(self, check: str, subject: str, detail: str, action: str, run: Callable[[], object]) -> None:
        if self.repair:
            run()
            self.findings.append(Finding(check, subject, "repaired", f"{detail}; {action}"))
        else:
            self.findings.append(Finding(check, subject, "problem", f"{detail}; --repair: {action}"))


def diagnose(settings: Settings, store: LabelStore, *, repair: bool = False) -> DoctorReport:
    """Run every check on the workspace of ``settings`` (label store ``store``), repairing when ``repair``."""
    checks = _Checks(repair)
    for campaign in store.campaign_names():
        _label_store(checks, store, campaign)
        _rounds(checks, store, campaign)
        _runs(checks, settings, store, campaign)
        _checkpoints(checks, settings.models_dir / campaign / "candidates", campaign)
    _feature_stores(checks, settings, store)
    return DoctorReport(checks.findings)


def _label_store(checks: _Checks, store: LabelStore, campaign: str) -> None:
    with store.engine.connect() as conn:
        duplicates = conn.execute(
            sa.select(queue.c.round, queue.c.item_id)
            .where(queue.c.campaign == campaign)
            .group_by(queue.c.round, queue.c.item_id)
            .having(sa.func.count() > 1)
        ).all()
        unknown = sorted(
            conn.execute(
                sa.select(labels.c.item_id)
                .where(
                    labels.c.campaign == campaign,
                    labels.c.item_id.not_in(sa.select(items.c.item_id).where(items.c.campaign == campaign)),
                )
                .distinct()
            ).scalars()
        )
        pending = set(
            conn.execute(
                sa.select(queue.c.item_id).where(queue.c.campaign == campaign, queue.c.status == "pending")
            ).scalars()
        )
    for round_, item in duplicates:
        checks.problem("queue", f"{campaign} round {round_}", f"item {item!r} is queued more than once")
    if unknown:
        detail = f"{len(unknown)} labelled items are not items of the campaign: {unknown[:5]}"
        checks.problem("labels", campaign, detail)
    answered = sorted(pending & set(store.current_labels(campaign)))
    for item in answered:
        checks.fix(
            "queue",
            f"{campaign} item {item}",
            "answered but still pending (it would be asked again)",
            "marked labeled",
            lambda item=item: _mark_labeled(store, campaign, item),
        )
    if not (duplicates or unknown or answered):
        checks.ok("label store", campaign, "queue unique per round; no answered item pending; every label known")


def _mark_labeled(store: LabelStore, campaign: str, item: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            queue.update()
            .where(queue.c.campaign == campaign, queue.c.item_id == item, queue.c.status == "pending")
            .values(status="labeled")
        )


def _rounds(checks: _Checks, store: LabelStore, campaign: str) -> None:
    running = store.running_rounds(campaign)
    if running and (elsewhere := round_running_elsewhere(store, campaign)) is not None:
        checks.ok("rounds", campaign, f"round {running[0]} is running now: {elsewhere}")
        return
    for round_ in running:
        checks.fix(
            "rounds",
            f"{campaign} round {round_}",
            "left running (its process died)",
            "marked failed; the next round command re-runs it",
            lambda round_=round_: store.mark_round_failed(campaign, round_),
        )
    if not running:
        checks.ok("rounds", campaign, "no round left running")


def _runs(checks: _Checks, settings: Settings, store: LabelStore, campaign: str) -> None:
    """MLflow round runs left RUNNING; skipped when the workspace's own tracking store does not exist yet."""
    if not settings.tracking.uri and not (settings.workspace / "mlflow.db").exists():
        return
    from flows.tracking import ROLE, ROUND, tracking_client

    client = tracking_client(settings.tracking_uri)
    experiment = client.get_experiment_by_name(campaign)
    if experiment is None:
        return
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{ROLE}` = 'round' and attributes.status = 'RUNNING'"
    )
    unfinished = set(store.unfinished_rounds(campaign))
    for run in runs:
        round_ = int(run.data.tags[ROUND])
        status = "FAILED" if round_ in unfinished else "FINISHED"
        checks.fix(
            "mlflow runs",
            f"{campaign} round {round_}",
            f"run {run.info.run_id} left RUNNING",
            f"set {status}" + ("; reopened when the round is re-run" if status == "FAILED" else ""),
            lambda run_id=run.info.run_id, status=status: client.set_terminated(run_id, status=status),
        )
    if not runs:
        checks.ok("mlflow runs", campaign, "no round run left RUNNING")


def _checkpoints(checks: _Checks, directory: Path, campaign: str) -> None:
    from flows.models import CheckpointError, read_checkpoint, set_aside

    paths = sorted(directory.glob("*.pt")) if directory.is_dir() else []
    bad = []
    for path in paths:
        try:
            read_checkpoint(path)
        except CheckpointError as error:
            bad.append(path)
            checks.fix(
                "checkpoints",
                f"{campaign} {path.name}",
                str(error),
                f"moved to {path.name}.corrupt; the next round falls back or retrains",
                lambda path=path, error=error: set_aside(path, error, quiet=True),
            )
    if paths and not bad:
        checks.ok("checkpoints", campaign, f"{len(paths)} load with weights_only=True")


def _feature_stores(checks: _Checks, settings: Settings, store: LabelStore) -> None:
    directories = sorted(p.parent for p in settings.datasets_dir.glob("*/meta.json"))
    opened = {}
    for directory in directories:
        try:
            features = open_feature_store(directory)
            features.verify()
        except FeatureStoreError as error:
            checks.problem("feature store", directory.name, f"{error}; re-import the dataset")
            continue
        opened[directory.name] = features
        checks.ok("feature store", directory.name, f"{len(features.ids)} rows match meta.json and its content hash")
    for campaign in store.campaign_names():
        name = Path(store.dataset_of(campaign)).stem
        features = opened.get(name)
        if features is None:
            if name not in {d.name for d in directories}:
                checks.problem("feature store", name, f"campaign {campaign}'s feature store is missing")
            continue
        rows = store.item_rows(campaign)
        ids = list(rows)
        found = features.lookup(ids) if ids else []
        wrong = [i for i, row in zip(ids, found, strict=True) if row != rows[i]]
        if wrong:
            checks.problem(
                "feature store",
                name,
                f"{len(wrong)} items of campaign {campaign} are not at their rows, e.g. {wrong[0]!r}",
            )
