"""The persistent label store and labeling queue (SQLAlchemy; SQLite with WAL by default, any URL works).

Tables follow ``DESIGN.md``: ``items`` (which rows of the feature store belong to a campaign, and their split),
``labels`` (append-only answers; the latest per item wins, disagreements are kept), ``retractions`` (answers
withdrawn by an undo: the answer stays in ``labels``, marked withdrawn here), ``queue`` (what was asked, unique
on campaign + round + item) and ``rounds`` (bookkeeping that makes a crashed round resumable).
Every public write is one transaction: a batch of labels is validated row by row, bad rows are reported with
their item id and reason, and the good rows are all written — or, on a database error, none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

SPLITS = ("pool", "test", "seed")
QUEUE_STATUSES = ("pending", "labeled", "skipped")

metadata = sa.MetaData()

campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("campaign", sa.String, primary_key=True),
    sa.Column("dataset", sa.String, nullable=False),
    sa.Column("classes", sa.Text, nullable=False),  # JSON list of class names
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("campaign", sa.String, primary_key=True),
    sa.Column("item_id", sa.String, primary_key=True),
    sa.Column("split", sa.Enum(*SPLITS, name="item_split"), nullable=False),
    sa.Column("row", sa.Integer, nullable=False),
)

labels = sa.Table(
    "labels",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("campaign", sa.String, nullable=False),
    sa.Column("item_id", sa.String, nullable=False),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("annotator", sa.String, nullable=False),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_labels_campaign_item", "campaign", "item_id"),
)

retractions = sa.Table(
    "retractions",
    metadata,
    sa.Column("label_id", sa.Integer, sa.ForeignKey("labels.id"), primary_key=True),
    sa.Column("annotator", sa.String, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

queue = sa.Table(
    "queue",
    metadata,
    sa.Column("campaign", sa.String, primary_key=True),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.String, primary_key=True),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("acquisition", sa.String, nullable=False),
    sa.Column("predicted", sa.Integer),
    sa.Column("status", sa.Enum(*QUEUE_STATUSES, name="queue_status"), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

rounds = sa.Table(
    "rounds",
    metadata,
    sa.Column("campaign", sa.String, primary_key=True),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("status", sa.Enum("running", "done", name="round_status"), nullable=False),
    sa.Column("metrics", sa.Text),  # JSON object of the round's summary metrics
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)


class StoreError(ValueError):
    """A write the store refuses; the message names the campaign and item."""


@dataclass(frozen=True)
class QueueEntry:
    item_id: str
    rank: int
    score: float | None
    acquisition: str
    predicted: int | None = None


@dataclass(frozen=True)
class QueuedItem(QueueEntry):
    round: int = 0
    status: str = "pending"
    created_at: datetime | None = None


@dataclass(frozen=True)
class LabelAnswer:
    item_id: str
    label: int


@dataclass
class LabelReport:
    """Which rows of a label batch were written and which were refused (item id, reason)."""

    accepted: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _standing_labels(conn: sa.Connection, campaign: str, item_ids: Sequence[str] | None = None) -> dict[str, int]:
    """Latest answer per item among those not withdrawn, of ``item_ids`` when given."""
    latest = sa.select(sa.func.max(labels.c.id)).where(
        labels.c.campaign == campaign, labels.c.id.not_in(sa.select(retractions.c.label_id))
    )
    if item_ids is not None:
        latest = latest.where(labels.c.item_id.in_(item_ids))
    query = sa.select(labels.c.item_id, labels.c.label).where(
        labels.c.id.in_(latest.group_by(labels.c.item_id).scalar_subquery())
    )
    return {r.item_id: r.label for r in conn.execute(query)}


def database_url(url: str) -> str:
    """``url`` with the PostgreSQL driver this project installs (psycopg 3) when it names none: SQLAlchemy reads a
    bare ``postgresql://`` (or ``postgres://``) as psycopg2, which is not installed. Other URLs are unchanged."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (``sqlite:///path``); None for other databases."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


class LabelStore:
    """Campaign state in one database. Safe to share between processes (transactions, WAL)."""

    def __init__(self, url: str) -> None:
        if (path := sqlite_file(url)) is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.url = database_url(url)
        self.engine: Engine = sa.create_engine(self.url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    @classmethod
    def for_workspace(cls, workspace: Path) -> LabelStore:
        return cls(f"sqlite:///{(Path(workspace) / 'labels.db').resolve()}")

    def close(self) -> None:
        self.engine.dispose()

    # --- campaigns and items -------------------------------------------------------------------------------
    def create_campaign(self, campaign: str, dataset: str, classes: Sequence[str]) -> None:
        """Register a campaign; a second call with the same classes is a no-op, other classes an error."""
        with self.engine.begin() as conn:
            existing = conn.execute(
                sa.select(campaigns.c.classes, campaigns.c.dataset).where(campaigns.c.campaign == campaign)
            ).first()
            if existing is None:
                conn.execute(
                    campaigns.insert().values(
                        campaign=campaign,
                        dataset=dataset,
                        classes=json.dumps(list(classes)),
                        created_at=_now(),
                    )
                )
            elif json.loads(existing.classes) != list(classes):
                raise StoreError(
                    f"campaign {campaign!r} exists with classes {json.loads(existing.classes)}, got {list(classes)}"
                )

    def extend_classes(self, campaign: str, new_classes: Sequence[str]) -> list[str]:
        """Append the names in ``new_classes`` the campaign does not know to its classes; return all of them.

        Existing class indices keep their meaning (new classes go last), so stored labels stay valid; names
        already known are ignored, so a repeated call is a no-op.
        """
        with self.engine.begin() as conn:
            value = conn.execute(sa.select(campaigns.c.classes).where(campaigns.c.campaign == campaign)).scalar()
            if value is None:
                raise StoreError(f"unknown campaign {campaign!r}")
            classes = json.loads(value)
            added = [c for c in dict.fromkeys(str(c) for c in new_classes) if c not in classes]
            if "" in added:
                raise StoreError(f"campaign {campaign!r}: a class name must not be empty")
            if added:
                classes += added
                conn.execute(
                    campaigns.update().where(campaigns.c.campaign == campaign).values(classes=json.dumps(classes))
                )
        return classes

    def dataset_of(self, campaign: str) -> str:
        """The dataset (name or path, as given when the campaign was created) whose feature store it uses."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(campaigns.c.dataset).where(campaigns.c.campaign == campaign)).scalar()
        if value is None:
            raise StoreError(f"unknown campaign {campaign!r}")
        return value

    def campaign_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(campaigns.c.campaign).order_by(campaigns.c.campaign)).scalars())

    def classes(self, campaign: str) -> list[str]:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(campaigns.c.classes).where(campaigns.c.campaign == campaign)).scalar()
        if value is None:
            raise StoreError(f"unknown campaign {campaign!r}")
        return json.loads(value)

    def add_items(self, campaign: str, item_ids: Sequence[str], splits: Sequence[str], rows: Sequence[int]) -> int:
        """Insert items not yet known; an id already known with another split or row is an error."""
        if not len(item_ids) == len(splits) == len(rows):
            raise StoreError(f"add_items: {len(item_ids)} ids, {len(splits)} splits, {len(rows)} rows")
        bad = next((s for s in splits if s not in SPLITS), None)
        if bad is not None:
            raise StoreError(f"unknown split {bad!r}; expected one of {SPLITS}")
        with self.engine.begin() as conn:
            known = {
                r.item_id: (r.split, r.row)
                for r in conn.execute(
                    sa.select(items.c.item_id, items.c.split, items.c.row).where(items.c.campaign == campaign)
                )
            }
            new = []
            for item_id, split, row in zip(item_ids, splits, rows, strict=True):
                if item_id in known:
                    if known[item_id] != (split, int(row)):
                        raise StoreError(
                            f"item {item_id!r} of campaign {campaign!r} is already stored as {known[item_id]}, "
                            f"got {(split, int(row))}"
                        )
                    continue
                new.append({"campaign": campaign, "item_id": item_id, "split": split, "row": int(row)})
            if new:
                conn.execute(items.insert(), new)
        return len(new)

    def item_rows(self, campaign: str, split: str | None = None) -> dict[str, int]:
        query = sa.select(items.c.item_id, items.c.row).where(items.c.campaign == campaign)
        if split is not None:
            query = query.where(items.c.split == split)
        with self.engine.connect() as conn:
            return {r.item_id: r.row for r in conn.execute(query)}

    # --- labels --------------------------------------------------------------------------------------------
    def record_labels(
        self,
        campaign: str,
        answers: Iterable[LabelAnswer],
        *,
        annotator: str,
        require_queued: bool = True,
    ) -> LabelReport:
        """Append answers in one transaction; refuse unknown items, unknown classes and out-of-queue items.

        An answer to a queued item marks it ``labeled`` and is recorded with that queue entry's round
        (``require_queued=False`` admits labels that arrive with the data, recorded as round 0).
        """
        report = LabelReport()
        n_classes = len(self.classes(campaign))
        with self.engine.begin() as conn:
            known = set(conn.execute(sa.select(items.c.item_id).where(items.c.campaign == campaign)).scalars())
            queued = {
                r.item_id: r.round
                for r in conn.execute(
                    sa.select(queue.c.item_id, sa.func.max(queue.c.round).label("round"))
                    .where(queue.c.campaign == campaign)
                    .group_by(queue.c.item_id)
                )
            }
            rows, now = [], _now()
            for answer in answers:
                if answer.item_id not in known:
                    report.rejected.append((answer.item_id, f"unknown item in campaign {campaign!r}"))
                elif not 0 <= int(answer.label) < n_classes:
                    report.rejected.append(
                        (answer.item_id, f"unknown class {answer.label}; expected 0..{n_classes - 1}")
                    )
                elif require_queued and answer.item_id not in queued:
                    report.rejected.append((answer.item_id, "item was never queued for labeling"))
                else:
                    rows.append(
                        {
                            "campaign": campaign,
                            "item_id": answer.item_id,
                            "label": int(answer.label),
                            "annotator": annotator,
                            "round": queued.get(answer.item_id, 0),
                            "created_at": now,
                        }
                    )
                    report.accepted.append(answer.item_id)
            if rows:
                conn.execute(labels.insert(), rows)
                conn.execute(
                    queue.update()
                    .where(queue.c.campaign == campaign, queue.c.item_id.in_(report.accepted))
                    .values(status="labeled")
                )
        return report

    def retract_label(self, campaign: str, item_id: str, *, annotator: str) -> int:
        """Withdraw ``annotator``'s latest standing answer for an item (an undo) and return its label.

        The answer stays in ``labels`` and a ``retractions`` row marks it withdrawn, so the history keeps both.
        The item's ``labeled`` queue entries return to ``pending`` unless another standing answer remains.
        """
        with self.engine.begin() as conn:
            answer = conn.execute(
                sa.select(labels.c.id, labels.c.label)
                .where(
                    labels.c.campaign == campaign,
                    labels.c.item_id == item_id,
                    labels.c.annotator == annotator,
                    labels.c.id.not_in(sa.select(retractions.c.label_id)),
                )
                .order_by(labels.c.id.desc())
                .limit(1)
            ).first()
            if answer is None:
                raise StoreError(
                    f"item {item_id!r} has no answer by {annotator!r} to withdraw in campaign {campaign!r}"
                )
            conn.execute(retractions.insert().values(label_id=answer.id, annotator=annotator, created_at=_now()))
            if item_id not in _standing_labels(conn, campaign, [item_id]):
                conn.execute(
                    queue.update()
                    .where(queue.c.campaign == campaign, queue.c.item_id == item_id, queue.c.status == "labeled")
                    .values(status="pending")
                )
        return answer.label

    def current_labels(self, campaign: str) -> dict[str, int]:
        """Latest standing label of every labeled item (append order decides; earlier and withdrawn answers stay
        in history)."""
        with self.engine.connect() as conn:
            return _standing_labels(conn, campaign)

    def answers_by(self, campaign: str, annotator: str) -> set[tuple[str, int]]:
        """Every ``(item_id, label)`` that ``annotator`` ever recorded in the campaign (superseded ones too)."""
        query = sa.select(labels.c.item_id, labels.c.label).where(
            labels.c.campaign == campaign, labels.c.annotator == annotator
        )
        with self.engine.connect() as conn:
            return {(r.item_id, r.label) for r in conn.execute(query)}

    def label_history(self, campaign: str, item_id: str) -> list[tuple[int, str, int]]:
        """Every answer for one item, oldest first, as (label, annotator, round)."""
        with self.engine.connect() as conn:
            return [
                (r.label, r.annotator, r.round)
                for r in conn.execute(
                    sa.select(labels.c.label, labels.c.annotator, labels.c.round)
                    .where(labels.c.campaign == campaign, labels.c.item_id == item_id)
                    .order_by(labels.c.id)
                )
            ]

    # --- queue ---------------------------------------------------------------------------------------------
    def enqueue(self, campaign: str, round_: int, entries: Sequence[QueueEntry]) -> list[QueuedItem]:
        """Queue a round's batch once: if the round already has a batch (a re-run), keep it and return it."""
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(sa.func.count()).where(queue.c.campaign == campaign, queue.c.round == round_)
            ).scalar()
            if not exists and entries:
                now = _now()
                conn.execute(
                    queue.insert(),
                    [
                        {
                            "campaign": campaign,
                            "round": round_,
                            "item_id": e.item_id,
                            "rank": e.rank,
                            "score": e.score,
                            "acquisition": e.acquisition,
                            "predicted": e.predicted,
                            "status": "pending",
                            "created_at": now,
                        }
                        for e in entries
                    ],
                )
        return self.queued(campaign, round_=round_)

    def queued(self, campaign: str, *, round_: int | None = None, status: str | None = None) -> list[QueuedItem]:
        """Queue entries in (round, rank) order, of one round and / or one of ``QUEUE_STATUSES`` when given."""
        if status is not None and status not in QUEUE_STATUSES:
            raise StoreError(f"unknown queue status {status!r}; expected one of {list(QUEUE_STATUSES)}")
        query = sa.select(queue).where(queue.c.campaign == campaign).order_by(queue.c.round, queue.c.rank)
        if round_ is not None:
            query = query.where(queue.c.round == round_)
        if status is not None:
            query = query.where(queue.c.status == status)
        with self.engine.connect() as conn:
            return [
                QueuedItem(
                    item_id=r.item_id,
                    rank=r.rank,
                    score=r.score,
                    acquisition=r.acquisition,
                    predicted=r.predicted,
                    round=r.round,
                    status=r.status,
                    created_at=r.created_at,
                )
                for r in conn.execute(query)
            ]

    def skip(self, campaign: str, item_id: str) -> None:
        """Mark a pending item as skipped: it leaves the pool and is never queued again."""
        self._move_queue_status(campaign, item_id, "pending", "skipped")

    def unskip(self, campaign: str, item_id: str) -> None:
        """Undo a skip: the item's skipped queue entries return to ``pending``."""
        self._move_queue_status(campaign, item_id, "skipped", "pending")

    def _move_queue_status(self, campaign: str, item_id: str, old: str, new: str) -> None:
        with self.engine.begin() as conn:
            updated = conn.execute(
                queue.update()
                .where(queue.c.campaign == campaign, queue.c.item_id == item_id, queue.c.status == old)
                .values(status=new)
            ).rowcount
        if not updated:
            raise StoreError(f"item {item_id!r} has no {old} queue entry in campaign {campaign!r}")

    def unlabeled_pool(self, campaign: str) -> dict[str, int]:
        """Pool items that have no standing label and were never queued (pending or skipped): candidates to score."""
        asked = sa.select(queue.c.item_id).where(queue.c.campaign == campaign)
        answered = sa.select(labels.c.item_id).where(
            labels.c.campaign == campaign, labels.c.id.not_in(sa.select(retractions.c.label_id))
        )
        query = sa.select(items.c.item_id, items.c.row).where(
            items.c.campaign == campaign,
            items.c.split == "pool",
            items.c.item_id.not_in(asked),
            items.c.item_id.not_in(answered),
        )
        with self.engine.connect() as conn:
            return {r.item_id: r.row for r in conn.execute(query.order_by(items.c.row))}

    # --- rounds --------------------------------------------------------------------------------------------
    def start_round(self, campaign: str, round_: int) -> None:
        with self.engine.begin() as conn:
            status = conn.execute(
                sa.select(rounds.c.status).where(rounds.c.campaign == campaign, rounds.c.round == round_)
            ).scalar()
            if status is None:
                conn.execute(
                    rounds.insert().values(campaign=campaign, round=round_, status="running", started_at=_now())
                )

    def finish_round(self, campaign: str, round_: int, metrics: dict[str, float]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                rounds.update()
                .where(rounds.c.campaign == campaign, rounds.c.round == round_)
                .values(status="done", finished_at=_now(), metrics=json.dumps(metrics))
            )

    def round_metrics(self, campaign: str) -> list[dict[str, float]]:
        """Summary metrics of every finished round, in round order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(rounds.c.metrics)
                .where(rounds.c.campaign == campaign, rounds.c.status == "done")
                .order_by(rounds.c.round)
            ).scalars()
            return [json.loads(m) for m in rows]

    def answers_since_last_round(self, campaign: str) -> int | None:
        """Answers and withdrawals recorded since the last finished round started (``None`` before any round):
        what tells a scheduled round whether there is anything new to learn from."""
        with self.engine.connect() as conn:
            since = conn.execute(
                sa.select(sa.func.max(rounds.c.started_at)).where(
                    rounds.c.campaign == campaign, rounds.c.status == "done"
                )
            ).scalar()
            if since is None:
                return None
            answered = conn.execute(
                sa.select(sa.func.count()).where(labels.c.campaign == campaign, labels.c.created_at >= since)
            ).scalar()
            withdrawn = conn.execute(
                sa.select(sa.func.count())
                .select_from(retractions.join(labels, retractions.c.label_id == labels.c.id))
                .where(labels.c.campaign == campaign, retractions.c.created_at >= since)
            ).scalar()
            return int(answered) + int(withdrawn)

    def unfinished_rounds(self, campaign: str) -> list[int]:
        """Rounds started and not finished: running now, or crashed (the next round call resumes them)."""
        query = sa.select(rounds.c.round).where(rounds.c.campaign == campaign, rounds.c.status == "running")
        with self.engine.connect() as conn:
            return sorted(conn.execute(query).scalars())

    def next_round(self, campaign: str) -> int:
        """The round to run: an unfinished one (resume after a crash) or the one after the last."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(rounds.c.round, rounds.c.status).where(rounds.c.campaign == campaign)).all()
        unfinished = [r.round for r in rows if r.status == "running"]
        if unfinished:
            return min(unfinished)
        return max((r.round for r in rows), default=0) + 1
