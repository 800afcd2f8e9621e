"""Label store support for data arriving mid-campaign: extended classes, answers by annotator, open rounds (on
SQLite and PostgreSQL)."""

import pytest

from data.store import LabelAnswer, LabelStore, StoreError


@pytest.fixture()
def store(store_url):
    s = LabelStore(store_url)
    s.create_campaign("c", "toy.csv", ["cat", "dog"])
    s.add_items("c", ["a", "b", "t"], ["pool", "pool", "test"], [0, 1, 2])
    yield s
    s.close()


def test_extend_classes_appends_unknown_names_once(store):
    store.record_labels("c", [LabelAnswer("a", 1)], annotator="x", require_queued=False)
    assert store.extend_classes("c", ["dog", "eel", "eel", "fox"]) == ["cat", "dog", "eel", "fox"]
    assert store.extend_classes("c", ["cat", "fox"]) == ["cat", "dog", "eel", "fox"]
    assert store.classes("c") == ["cat", "dog", "eel", "fox"]
    assert store.current_labels("c") == {"a": 1}  # indices keep their meaning
    report = store.record_labels("c", [LabelAnswer("b", 3)], annotator="x", require_queued=False)
    assert report.accepted == ["b"]
    store.create_campaign("c", "toy.csv", ["cat", "dog", "eel", "fox"])  # same classes: a no-op
    with pytest.raises(StoreError, match="unknown campaign 'nope'"):
        store.extend_classes("nope", ["x"])
    with pytest.raises(StoreError, match="must not be empty"):
        store.extend_classes("c", [""])


def test_dataset_answers_by_and_unfinished_rounds(store):
    assert store.dataset_of("c") == "toy.csv"
    with pytest.raises(StoreError, match="unknown campaign 'nope'"):
        store.dataset_of("nope")
    store.record_labels("c", [LabelAnswer("a", 0), LabelAnswer("b", 1)], annotator="ingest", require_queued=False)
    store.record_labels("c", [LabelAnswer("a", 1)], annotator="ann", require_queued=False)
    store.record_labels("c", [LabelAnswer("a", 1)], annotator="ingest", require_queued=False)
    assert store.answers_by("c", "ingest") == {("a", 0), ("b", 1), ("a", 1)}
    assert store.answers_by("c", "nobody") == set()
    assert store.unfinished_rounds("c") == []
    store.start_round("c", 1)
    assert store.unfinished_rounds("c") == [1]
    store.finish_round("c", 1, {"n_labeled": 2})
    assert store.unfinished_rounds("c") == []
