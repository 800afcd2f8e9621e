"""Label store and queue on real SQLite and PostgreSQL databases: uniqueness, transactions, rejection reports."""

import pytest
import sqlalchemy as sa

from data.store import LabelAnswer, LabelStore, QueueEntry, StoreError, queue


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
