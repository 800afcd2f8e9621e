"""Label store and queue on real SQLite and PostgreSQL databases: uniqueness, transactions, rejection reports."""

import multiprocessing

import pytest
import sqlalchemy as sa

from data.store import MAX_LOOKUP_IDS, LabelAnswer, LabelStore, QueueEntry, StoreError, queue


@pytest.fixture()
def store(store_url):
    s = LabelStore(store_url)
    s.create_campaign("c", "toy", ["cat", "dog", "eel"])
    s.add_items("c", ["a", "b", "c", "d", "t"], ["pool", "pool", "pool", "seed", "test"], [0, 1, 2, 3, 4])
    yield s
    s.close()


def _entries(ids):
    return [QueueEntry(item_id=i, rank=r, score=1.0 / r, acquisition="bald", predicted=0) for r, i in enumerate(ids, 1)]


def test_enqueue_twice_keeps_the_first_batch(store):
    first = store.enqueue("c", 1, _entries(["a", "b"]))
    again = store.enqueue("c", 1, _entries(["c", "b"]))  # a re-run of a crashed round that ranks differently
    assert [q.item_id for q in first] == ["a", "b"]
    assert [q.item_id for q in again] == ["a", "b"]
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(queue)).scalar() == 2


def test_queue_is_unique_per_campaign_round_item(store):
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        for _ in range(2):
            conn.execute(
                queue.insert().values(
                    campaign="c",
                    round=5,
                    item_id="a",
                    rank=1,
                    acquisition="x",
                    status="pending",
                    created_at=sa.func.now(),
                )
            )


def test_bad_label_rows_are_reported_and_good_rows_kept(store):
    store.enqueue("c", 1, _entries(["a", "b"]))
    report = store.record_labels(
        "c",
        [LabelAnswer("a", 1), LabelAnswer("zzz", 0), LabelAnswer("b", 7), LabelAnswer("c", 0)],
        annotator="ann",
    )
    assert report.accepted == ["a"]
    reasons = dict(report.rejected)
    assert "unknown item" in reasons["zzz"]
    assert "unknown class 7" in reasons["b"]
    assert "never queued" in reasons["c"]
    assert store.current_labels("c") == {"a": 1}
    assert [q.status for q in store.queued("c", round_=1)] == ["labeled", "pending"]


def test_latest_label_wins_and_history_keeps_disagreement(store):
    store.enqueue("c", 1, _entries(["a"]))
    store.record_labels("c", [LabelAnswer("a", 0)], annotator="ann1")
    store.record_labels("c", [LabelAnswer("a", 2)], annotator="ann2")
    assert store.current_labels("c") == {"a": 2}
    assert store.label_history("c", "a") == [(0, "ann1", 1), (2, "ann2", 1)]


FAIL_ON_B = {
    "sqlite": [
        "CREATE TRIGGER fail_b BEFORE INSERT ON labels WHEN NEW.item_id = 'b' "
        "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION fail_b() RETURNS trigger AS $$ BEGIN "
        "IF NEW.item_id = 'b' THEN RAISE EXCEPTION 'disk on fire'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER fail_b BEFORE INSERT ON labels FOR EACH ROW EXECUTE FUNCTION fail_b()",
    ],
}
"""A trigger, in each database's dialect, that fails the insert of item ``b``'s label."""


def test_label_batch_is_one_transaction(store):
    store.enqueue("c", 1, _entries(["a", "b"]))
    # A trigger makes the database fail on the second row: nothing of the batch may stay.
    with store.engine.begin() as conn:
        for statement in FAIL_ON_B[store.engine.dialect.name]:
            conn.exec_driver_sql(statement)
    with pytest.raises(sa.exc.DBAPIError, match="disk on fire"):
        store.record_labels("c", [LabelAnswer("a", 1), LabelAnswer("b", 1)], annotator="ann")
    assert store.current_labels("c") == {}
    assert {q.status for q in store.queued("c")} == {"pending"}


def test_pool_excludes_labeled_queued_seed_and_test_items(store):
    store.enqueue("c", 1, _entries(["a"]))
    store.record_labels("c", [LabelAnswer("d", 0)], annotator="seed", require_queued=False)
    assert store.unlabeled_pool("c") == {"b": 1, "c": 2}
    store.skip("c", "a")
    assert store.queued("c")[0].status == "skipped"
    with pytest.raises(StoreError, match="no pending queue entry"):
        store.skip("c", "a")


def test_items_conflicting_with_stored_ones_are_refused(store):
    assert store.add_items("c", ["a", "e"], ["pool", "pool"], [0, 5]) == 1
    with pytest.raises(StoreError, match=r"'a'.*already stored"):
        store.add_items("c", ["a"], ["test"], [0])
    with pytest.raises(StoreError, match="unknown split 'train'"):
        store.add_items("c", ["x"], ["train"], [9])


def test_campaign_classes_cannot_change(store):
    store.create_campaign("c", "toy", ["cat", "dog", "eel"])
    with pytest.raises(StoreError, match="exists with classes"):
        store.create_campaign("c", "toy", ["cat", "dog"])


def test_rounds_resume_unfinished(store):
    assert store.next_round("c") == 1
    store.start_round("c", 1)
    assert store.next_round("c") == 1  # crashed round 1 is resumed
    store.finish_round("c", 1, {"round": 1, "n_labeled": 3})
    assert store.next_round("c") == 2
    assert store.round_metrics("c") == [{"round": 1, "n_labeled": 3}]


def test_answers_since_the_last_round_are_those_it_did_not_read(store):
    """Answers recorded while a round runs count as new only when the round did not read them: a simulated round
    records the oracle's answers and trains on them (its metrics' ``labels_upto``); a person's answer after the
    round's read counts. A withdrawal since the round started counts too."""
    assert store.answers_since_last_round("c") is None  # before any round
    store.enqueue("c", 1, _entries(["a", "b", "c"]))
    store.start_round("c", 2)
    store.record_labels("c", [LabelAnswer("a", 0), LabelAnswer("b", 1)], annotator="oracle")
    read = store.label_snapshot("c")
    store.record_labels("c", [LabelAnswer("c", 2)], annotator="person")  # after the round's read
    store.finish_round("c", 2, {"labels_upto": read.upto})
    assert read.upto > 0 and store.answers_since_last_round("c") == 1
    store.retract_label("c", "a", annotator="oracle")
    assert store.answers_since_last_round("c") == 2
    store.start_round("c", 3)
    store.finish_round("c", 3, {})  # metrics without labels_upto (rounds logged before it): answers since its start
    assert store.answers_since_last_round("c") == 0


def test_retracting_an_answer_keeps_it_in_history_and_requeues_the_item(store):
    store.enqueue("c", 1, _entries(["a", "b"]))
    store.record_labels("c", [LabelAnswer("a", 1), LabelAnswer("b", 2)], annotator="ann")
    assert store.retract_label("c", "a", annotator="ann") == 1
    assert store.current_labels("c") == {"b": 2}
    assert store.label_history("c", "a") == [(1, "ann", 1)]  # the withdrawn answer stays on record
    assert [q.status for q in store.queued("c", round_=1)] == ["pending", "labeled"]
    with pytest.raises(StoreError, match="no answer by 'ann' to withdraw"):
        store.retract_label("c", "a", annotator="ann")
    store.record_labels("c", [LabelAnswer("a", 0)], annotator="ann")
    assert store.current_labels("c") == {"a": 0, "b": 2}


def test_retracting_one_of_two_answers_leaves_the_other_standing(store):
    store.enqueue("c", 1, _entries(["a"]))
    store.record_labels("c", [LabelAnswer("a", 0)], annotator="ann1")
    store.record_labels("c", [LabelAnswer("a", 2)], annotator="ann2")
    store.retract_label("c", "a", annotator="ann2")
    assert store.current_labels("c") == {"a": 0}
    assert store.queued("c", round_=1)[0].status == "labeled"
    with pytest.raises(StoreError, match="'ann3'"):
        store.retract_label("c", "a", annotator="ann3")


def test_unskip_returns_a_skipped_item_to_the_queue(store):
    store.enqueue("c", 1, _entries(["a"]))
    store.skip("c", "a")
    store.unskip("c", "a")
    assert store.queued("c", round_=1)[0].status == "pending"
    with pytest.raises(StoreError, match="no skipped queue entry"):
        store.unskip("c", "a")


def test_a_withdrawn_label_does_not_hide_an_item_from_the_pool(store):
    store.record_labels("c", [LabelAnswer("a", 1)], annotator="import", require_queued=False)
    assert "a" not in store.unlabeled_pool("c")
    store.retract_label("c", "a", annotator="import")
    assert "a" in store.unlabeled_pool("c")


def test_a_database_of_the_older_schema_opens_without_loss_and_gains_the_queue_parts(tmp_path):
    """A workspace made before the queue kept the predicted class's probability and the uncertainty parts."""
    path = tmp_path / "labels.db"
    with sa.create_engine(f"sqlite:///{path}").begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE queue (campaign VARCHAR NOT NULL, round INTEGER NOT NULL, item_id VARCHAR NOT NULL, "
                "rank INTEGER NOT NULL, score FLOAT, acquisition VARCHAR NOT NULL, predicted INTEGER, "
                "status VARCHAR(7) NOT NULL, created_at DATETIME NOT NULL, PRIMARY KEY (campaign, round, item_id))"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO queue VALUES ('c', 1, 'a', 1, 0.5, 'bald', 2, 'pending', '2026-01-01 00:00:00'), "
                "('c', 1, 'b', 2, 0.25, 'bald', 0, 'skipped', '2026-01-01 00:00:00')"
            )
        )
    store = LabelStore(f"sqlite:///{path}")
    old = store.queued("c", round_=1)
    assert [(q.item_id, q.rank, q.score, q.predicted, q.status) for q in old] == [
        ("a", 1, 0.5, 2, "pending"),
        ("b", 2, 0.25, 0, "skipped"),
    ]
    assert {(q.probability, q.epistemic, q.aleatoric) for q in old} == {(None, None, None)}
    store.create_campaign("c", "toy", ["cat", "dog", "eel"])
    store.add_items("c", ["x"], ["pool"], [0])
    entry = QueueEntry("x", 1, 0.3, "bald", 1, probability=0.7, epistemic=0.3, aleatoric=0.4)
    store.enqueue("c", 2, [entry])
    stored = store.queued("c", round_=2)[0]
    assert (stored.predicted, stored.probability, stored.epistemic, stored.aleatoric) == (1, 0.7, 0.3, 0.4)
    assert "ix_queue_campaign_item" in {i["name"] for i in sa.inspect(store.engine).get_indexes("queue")}
    store.close()
    again = LabelStore(f"sqlite:///{path}")  # opening an upgraded database again changes nothing
    assert [q.item_id for q in again.queued("c")] == ["a", "b", "x"]
    again.close()


def test_label_policies_with_several_annotators(store):
    """``latest``: the latest answer by anyone; ``majority``: one vote per annotator (their latest), ties left out."""
    store.enqueue("c", 1, _entries(["a", "b", "c"]))
    for annotator, answers in (
        ("ada", {"a": 0, "b": 1, "c": 2}),
        ("bob", {"a": 0, "b": 2, "c": 1}),
        ("cy", {"a": 1}),
        ("ada", {"c": 1}),  # ada changes her mind: still one vote, now agreeing with bob
    ):
        report = store.record_labels("c", [LabelAnswer(i, label) for i, label in answers.items()], annotator=annotator)
        assert report.rejected == []
    assert store.current_labels("c") == {"a": 1, "b": 2, "c": 1}
    majority = store.label_snapshot("c", "majority")
    assert majority.labels == {"a": 0, "c": 1}  # b: ada 1 vs bob 2, a tie, waits for another answer
    assert (majority.n_answered, majority.n_multiple, majority.n_conflicting, majority.n_tied) == (3, 3, 2, 1)
    assert majority.disagreement_rate == pytest.approx(2 / 3)
    assert store.label_snapshot("c").n_tied == 0 and store.label_snapshot("c").n_conflicting == 2

    store.record_labels("c", [LabelAnswer("b", 2)], annotator="cy")  # the tie resolved
    store.retract_label("c", "a", annotator="cy")  # and cy's dissent on a withdrawn
    resolved = store.label_snapshot("c", "majority")
    assert resolved.labels == {"a": 0, "b": 2, "c": 1} and resolved.n_tied == 0
    assert (resolved.n_conflicting, resolved.disagreement_rate) == (1, pytest.approx(1 / 3))
    assert store.label_snapshot("c", "majority", upto=majority.upto).labels == {"a": 0, "c": 1}
    with pytest.raises(StoreError, match="unknown label policy 'vote'"):
        store.label_snapshot("c", "vote")


def test_no_answers_no_disagreement(store):
    snapshot = store.label_snapshot("c", "majority")
    assert (snapshot.labels, snapshot.upto, snapshot.disagreement_rate, snapshot.n_conflicting) == ({}, 0, 0.0, 0)


def test_a_skipped_item_cannot_be_labelled_until_the_skip_is_undone(store):
    store.enqueue("c", 1, _entries(["a", "b"]))
    store.skip("c", "a")
    report = store.record_labels("c", [LabelAnswer("a", 1), LabelAnswer("b", 2)], annotator="ada")
    assert report.accepted == ["b"] and report.rejected[0][0] == "a" and "skipped" in report.rejected[0][1]
    late = store.record_labels("c", [LabelAnswer("a", 1)], annotator="import", require_queued=False)
    assert late.accepted == [] and "undo the skip" in late.rejected[0][1]
    assert "a" not in store.unlabeled_pool("c") and store.current_labels("c") == {"b": 2}
    store.unskip("c", "a")
    assert store.record_labels("c", [LabelAnswer("a", 1)], annotator="ada").accepted == ["a"]
    assert store.queued("c", round_=1)[0].status == "labeled"


@pytest.mark.parametrize("n_items", [3, MAX_LOOKUP_IDS + 10])
def test_small_and_large_batches_check_items_alike(store, n_items):
    """A page's answer looks up its own items, an import of many reads the campaign's once: the same outcome."""
    ids = [f"p{i}" for i in range(n_items)]
    store.add_items("c", ids, ["pool"] * n_items, list(range(10, 10 + n_items)))
    store.enqueue("c", 1, _entries(ids[1:]))
    store.skip("c", ids[2])
    batch = [LabelAnswer(i, 1) for i in [*ids, "ghost"]]
    report = store.record_labels("c", batch, annotator="ada")
    assert dict(report.rejected).keys() == {"p0", "p2", "ghost"}
    assert "never queued" in dict(report.rejected)["p0"] and "skipped" in dict(report.rejected)["p2"]
    assert report.accepted == ids[1:2] + ids[3:] and len(store.current_labels("c")) == n_items - 2


def _open_store_after(barrier, url: str) -> None:
    barrier.wait()  # every process checks for the tables at once
    LabelStore(url).close()


def test_processes_opening_the_same_new_store_at_once_all_succeed(tmp_path):
    """Creating the tables is check-then-create per table: a process that loses the race to another one re-checks
    instead of failing with "table ... already exists" (seen when a served round and a CLI opened a new store)."""
    context = multiprocessing.get_context("spawn")
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'race-{attempt}.db'}"
        barrier = context.Barrier(4)
        workers = [context.Process(target=_open_store_after, args=(barrier, url)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert [worker.exitcode for worker in workers] == [0] * 4


def test_the_database_file_alone_holds_what_a_finished_process_wrote(tmp_path, database_file_after_exit):
    """DVC caches ``workspace/labels.db`` without its write-ahead log: after a process that added items has exited
    with its connections open (objects frozen, as the CLI does), a copy of the file alone has them."""
    database = tmp_path / "labels.db"
    code = (
        "from data.store import LabelStore\n"
        f"store = LabelStore('sqlite:///{database}')\n"
        "store.create_campaign('c', 'digits', ['a', 'b'])\n"
        "store.add_items('c', ['i1', 'i2'], ['pool', 'pool'], [0, 1])\n"
    )
    copy = database_file_after_exit(code, database)
    assert LabelStore(f"sqlite:///{copy}").item_rows("c") == {"i1": 0, "i2": 1}
