"""A hypothesis state machine over the label store (a real SQLite file): random sequences of enqueue, answer,
skip, relabel, undo, import, round start / finish and crashes (a transaction aborted midway) keep its invariants —
the queue is unique per round, every answer is kept, no answered item is pending, the training label is the latest
standing answer, and the pool to score is exactly the items neither answered nor asked.

``HYPOTHESIS_STORE_EXAMPLES`` sets the number of sequences (20 in CI, ~20 s here; raise it for a deeper run).
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from data.store import LabelAnswer, LabelStore, QueueEntry, StoreError, labels, queue

CAMPAIGN = "c"
CLASSES = ["a", "b", "c"]
POOL = [f"p{i}" for i in range(8)]
SEED = ["s0", "s1"]
ANNOTATORS = st.sampled_from(["ann", "bob"])


class Crash(RuntimeError):
    """The process died inside a write (raised midway through a transaction's input)."""


def _crashing(items: list, after: int):
    """Yield ``after`` of ``items``, then raise :class:`Crash` — inside the store's transaction."""
    yield from items[:after]
    raise Crash


class _CrashingEntries(list):
    """A batch whose iteration dies after ``after`` entries (the store reads it inside its transaction)."""

    def __init__(self, entries, after):
        super().__init__(entries)
        self.after = after

    def __iter__(self):
        return _crashing(list(super().__iter__()), self.after)


class LabelStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="store-sm-"))
        self.store = LabelStore(f"sqlite:///{self.directory / 'labels.db'}")
        self.answers: list[tuple[str, int, str]] = []  # every accepted answer, in order
        self.withdrawn: set[int] = set()  # positions in ``answers`` undone
        self.queue: dict[tuple[int, str], str] = {}  # (round, item) -> status
        self.rounds: dict[int, str] = {}

    @initialize()
    def create(self) -> None:
        self.store.create_campaign(CAMPAIGN, "fuzz", CLASSES)
        self.store.add_items(CAMPAIGN, POOL + SEED, ["pool"] * len(POOL) + ["seed"] * len(SEED), list(range(10)))

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- the model ----------------------------------------------------------------------------------------
    def standing(self) -> dict[str, int]:
        """The latest-answer rule: each item's last answer not withdrawn."""
        latest: dict[str, int] = {}
        for position, (item, label, _) in enumerate(self.answers):
            if position not in self.withdrawn:
                latest[item] = label
        return latest

    def asked(self) -> set[str]:
        return {item for _, item in self.queue}

    def current_round(self) -> int | None:
        running = sorted(r for r, s in self.rounds.items() if s == "running")
        return running[0] if running else None

    def _accept(self, item: str, label: int, who: str, require_queued: bool) -> bool:
        """Known item and class, queued when required, and not skipped (a skip refuses answers until undone)."""
        skipped = any(k[1] == item and status == "skipped" for k, status in self.queue.items())
        return (
            item in POOL + SEED
            and 0 <= label < len(CLASSES)
            and (not require_queued or item in self.asked())
            and not skipped
        )

    def _record(self, item: str, label: int, who: str) -> None:
        self.answers.append((item, label, who))
        for key in [k for k in self.queue if k[1] == item]:
            self.queue[key] = "labeled"

    # --- rules --------------------------------------------------------------------------------------------
    @rule()
    def start_round(self) -> None:
        round_ = self.store.next_round(CAMPAIGN)
        expected = self.current_round() or max(self.rounds, default=0) + 1
        assert round_ == expected
        self.store.start_round(CAMPAIGN, round_)
        self.rounds.setdefault(round_, "running")

    @precondition(lambda self: self.current_round() is not None)
    @rule(k=st.integers(1, 4), crash_after=st.one_of(st.none(), st.integers(0, 3)))
    def enqueue(self, k: int, crash_after: int | None) -> None:
        round_ = self.current_round()
        pool = list(self.store.unlabeled_pool(CAMPAIGN))[:k]
        entries = [QueueEntry(item, rank, 0.5, "bald", 0) for rank, item in enumerate(pool, start=1)]
        already = any(r == round_ for r, _ in self.queue)
        if crash_after is not None and entries and not already:
            with pytest.raises(Crash):
                self.store.enqueue(CAMPAIGN, round_, _CrashingEntries(entries, crash_after))
            return
        queued = self.store.enqueue(CAMPAIGN, round_, entries)
        if not already:
            for item in pool:
                self.queue[(round_, item)] = "pending"
        assert sorted(q.item_id for q in queued) == sorted(i for r, i in self.queue if r == round_)

    @rule(item=st.sampled_from(POOL + SEED + ["ghost"]), label=st.integers(-1, 3), who=ANNOTATORS)
    def answer(self, item: str, label: int, who: str) -> None:
        """A person's answer (also a relabel, when the item was answered before)."""
        report = self.store.record_labels(CAMPAIGN, [LabelAnswer(item, label)], annotator=who)
        accepted = self._accept(item, label, who, require_queued=True)
        assert report.accepted == ([item] if accepted else [])
        if accepted:
            self._record(item, label, who)

    @rule(
        batch=st.lists(st.tuples(st.sampled_from(POOL + SEED + ["ghost"]), st.integers(-1, 3)), max_size=5),
        who=ANNOTATORS,
        crash_after=st.one_of(st.none(), st.none(), st.integers(0, 4)),
    )
    def import_labels(self, batch, who: str, crash_after: int | None) -> None:
        """Labels arriving with data (not queued), or a crash part-way through reading the batch."""
        answers = [LabelAnswer(item, label) for item, label in batch]
        if crash_after is not None and crash_after < len(answers):
            with pytest.raises(Crash):
                self.store.record_labels(CAMPAIGN, _crashing(answers, crash_after), annotator=who, require_queued=False)
            return
        report = self.store.record_labels(CAMPAIGN, answers, annotator=who, require_queued=False)
        expected = [item for item, label in batch if self._accept(item, label, who, require_queued=False)]
        assert report.accepted == expected
        for item, label in batch:
            if self._accept(item, label, who, require_queued=False):
                self._record(item, label, who)

    @rule(item=st.sampled_from(POOL), who=ANNOTATORS)
    def undo(self, item: str, who: str) -> None:
        mine = [p for p, (i, _, w) in enumerate(self.answers) if i == item and w == who and p not in self.withdrawn]
        if not mine:
            with pytest.raises(StoreError):
                self.store.retract_label(CAMPAIGN, item, annotator=who)
            return
        assert self.store.retract_label(CAMPAIGN, item, annotator=who) == self.answers[mine[-1]][1]
        self.withdrawn.add(mine[-1])
        if item not in self.standing():
            for key in [k for k in self.queue if k[1] == item and self.queue[k] == "labeled"]:
                self.queue[key] = "pending"

    @rule(item=st.sampled_from(POOL))
    def skip(self, item: str) -> None:
        keys = [k for k in self.queue if k[1] == item and self.queue[k] == "pending"]
        if not keys:
            with pytest.raises(StoreError):
                self.store.skip(CAMPAIGN, item)
            return
        self.store.skip(CAMPAIGN, item)
        for key in keys:
            self.queue[key] = "skipped"

    @precondition(lambda self: self.current_round() is not None)
    @rule()
    def finish_round(self) -> None:
        round_ = self.current_round()
        self.store.finish_round(CAMPAIGN, round_, {"n_labeled": float(len(self.standing()))})
        self.rounds[round_] = "done"

    # --- invariants ---------------------------------------------------------------------------------------
    @invariant()
    def queue_unique_per_round_and_as_modelled(self) -> None:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(queue.c.round, queue.c.item_id, queue.c.status)).all()
        assert len(rows) == len({(r.round, r.item_id) for r in rows})
        assert {(r.round, r.item_id): r.status for r in rows} == self.queue

    @invariant()
    def every_answer_kept(self) -> None:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(labels.c.item_id, labels.c.label, labels.c.annotator).order_by(labels.c.id))
            assert [tuple(r) for r in rows] == self.answers

    @invariant()
    def training_labels_follow_the_latest_answer_and_none_is_pending(self) -> None:
        standing = self.store.current_labels(CAMPAIGN)
        assert standing == self.standing()
        pending = {q.item_id for q in self.store.queued(CAMPAIGN, status="pending")}
        assert not pending & set(standing)

    @invariant()
    def pool_is_the_unanswered_unasked_items(self) -> None:
        expected = [i for i in POOL if i not in self.standing() and i not in self.asked()]
        assert list(self.store.unlabeled_pool(CAMPAIGN)) == expected

    @invariant()
    def rounds_as_recorded(self) -> None:
        assert self.store.unfinished_rounds(CAMPAIGN) == sorted(r for r, s in self.rounds.items() if s == "running")


LabelStoreMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_STORE_EXAMPLES", "20")),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLabelStoreMachine = LabelStoreMachine.TestCase
