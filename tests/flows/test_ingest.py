"""``beliefloop ingest``: new items join a campaign in its original feature space, idempotently, and the next real
Prefect round trains on the new labels, scores the new pool items and evaluates on the new test items."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets as skd

from data import DatasetError, open_feature_store
from data.store import LabelStore, StoreError
from flows.campaign_setup import campaign_test_rows, feature_store_dir, prepare_campaign
from flows.ingest import IngestReport, ingest
from flows.settings import load_settings

IRIS = skd.load_iris()
FEATURES = [f"f{j}" for j in range(4)]


@pytest.fixture(scope="module")
def prefect_no_heartbeat():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _iris_table(rows, labels, splits, ids) -> pd.DataFrame:
    frame = pd.DataFrame(IRIS.data[rows], columns=FEATURES)
    frame.insert(0, "id", ids)
    frame["label"] = labels
    frame["split"] = splits
    return frame


def _live(tmp_path: Path, campaign: str = "live", **overrides):
    """A live iris campaign from a CSV: 30 test rows, a third of the training rows unlabeled (the pool)."""
    original = tmp_path / "iris-original.csv"
    if not original.exists():
        n = len(IRIS.target)
        splits = np.where(np.random.default_rng(0).permutation(n) < 30, "test", "train")
        labels = IRIS.target_names[IRIS.target].astype(object)
        labels[(splits == "train") & (np.arange(n) % 3 == 0)] = None
        _iris_table(np.arange(n), labels, splits, [f"iris-{i:03d}" for i in range(n)]).to_csv(original, index=False)
    settings = load_settings(
        None,
        {
            "workspace": tmp_path / "w",
            "dataset": {"name": str(original), "label_column": "label", "id_column": "id"},
            "campaign": {"name": campaign, "k": 5, "min_labels": 10},
            "model": {"steps": 40},
            "selection": {"candidates": [{"name": "h32", "hidden": 32, "depth": 1}]},
            "acquisition": {"samples": 8},
            **overrides,
        },
    )
    store = LabelStore(settings.store_url)
    prepare_campaign(settings, store, simulate=False)
    return settings, store


def _batch(path: Path, rows, labels, splits) -> Path:
    """Copies of original iris rows (raw, unscaled features) under fresh ids ``b0, b1, ...``."""
    _iris_table(np.asarray(rows), labels, splits, [f"b{i}" for i in range(len(rows))]).to_csv(path, index=False)
    return path


def _name(i: int) -> str:
    return str(IRIS.target_names[IRIS.target[i]])


STANDARD_ROWS = list(range(10))


def _standard_batch(tmp_path: Path) -> Path:
    """4 labeled + 4 unlabeled pool rows and 2 test rows."""
    labels = [_name(i) for i in range(4)] + [None] * 4 + [_name(8), _name(9)]
    return _batch(tmp_path / "batch.csv", STANDARD_ROWS, labels, ["train"] * 8 + ["test"] * 2)


def test_ingest_adds_pool_labels_and_test_items_in_the_original_feature_space(tmp_path):
    settings, store = _live(tmp_path)
    n_labels = len(store.current_labels("live"))
    report = ingest(settings, _standard_batch(tmp_path), campaign="live")
    assert report == IngestReport("live", str((tmp_path / "batch.csv").resolve()), 8, 4, 2, (), 0, 10)
    assert "8 pool items (4 labels recorded), 2 test items" in report.summary()
    pool, test = store.item_rows("live", "pool"), store.item_rows("live", "test")
    assert {f"batch/b{i}" for i in range(8)} <= set(pool) and {"batch/b8", "batch/b9"} <= set(test)
    labels = store.current_labels("live")
    assert len(labels) == n_labels + 4
    assert {f"batch/b{i}": labels[f"batch/b{i}"] for i in range(4)} == {f"batch/b{i}": 0 for i in range(4)}
    assert store.label_history("live", "batch/b0") == [(0, "ingest", 0)]
    assert {f"batch/b{i}" for i in range(4, 8)} <= set(store.unlabeled_pool("live"))

    features = open_feature_store(feature_store_dir(settings))
    assert features.n_appended == 10 and features.rows_test == range(features.n_train, features.n_train + 30)
    copies = features.row_of([f"batch/b{i}" for i in STANDARD_ROWS])
    originals = features.row_of([f"iris-{i:03d}" for i in STANDARD_ROWS])
    np.testing.assert_allclose(features.features[copies], features.features[originals], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(features.targets[copies], [0, 0, 0, 0, -1, -1, -1, -1, 0, 0])
    rows = campaign_test_rows(settings, features)
    assert len(rows) == 32 and set(copies[8:].tolist()) <= set(rows.tolist())
    assert set(np.asarray(features.rows_test).tolist()) <= set(rows.tolist())


def test_reingest_is_a_no_op_and_a_crashed_ingest_is_rerun_safely(tmp_path, monkeypatch):
    settings, store = _live(tmp_path)
    batch = _standard_batch(tmp_path)
    directory = feature_store_dir(settings)

    real_add, real_record = LabelStore.add_items, LabelStore.record_labels

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(LabelStore, "add_items", crash)  # dies after the feature-store append
    with pytest.raises(RuntimeError, match="killed"):
        ingest(settings, batch, campaign="live")
    monkeypatch.setattr(LabelStore, "add_items", real_add)
    assert open_feature_store(directory).n_appended == 10 and "batch/b0" not in store.item_rows("live")
    monkeypatch.setattr(LabelStore, "record_labels", crash)  # now dies between the items and their labels
    with pytest.raises(RuntimeError, match="killed"):
        ingest(settings, batch, campaign="live")
    monkeypatch.setattr(LabelStore, "record_labels", real_record)
    assert "batch/b0" in store.item_rows("live") and "batch/b0" not in store.current_labels("live")

    again = ingest(settings, batch, campaign="live")
    assert (again.n_pool, again.n_labeled, again.n_test, again.skipped_existing, again.n_appended) == (0, 4, 0, 10, 0)
    labels, digest = store.current_labels("live"), open_feature_store(directory).meta["content_hash"]
    for _ in range(2):
        same = ingest(settings, batch, campaign="live")
        assert (same.n_pool, same.n_labeled, same.n_test, same.skipped_existing, same.n_appended) == (0, 0, 0, 10, 0)
    assert store.current_labels("live") == labels and store.label_history("live", "batch/b1") == [(0, "ingest", 0)]
    assert open_feature_store(directory).meta["content_hash"] == digest

    (tmp_path / "batch2").mkdir()
    clash = _batch(tmp_path / "batch2" / "batch.csv", [50, 51], [None, None], ["train", "train"])
    with pytest.raises(DatasetError, match=r"item 'batch/b0' is already in the feature store with different features"):
        ingest(settings, clash, campaign="live")  # same stem, other rows: the ids must not be reused
    assert ingest(settings, clash, campaign="live", id_prefix="second/").n_pool == 2


def test_new_classes_are_refused_by_name_unless_allowed(tmp_path):
    settings, store = _live(tmp_path)
    sibling, _ = _live(tmp_path, campaign="sibling")
    candidates = settings.models_dir / "live" / "candidates"
    candidates.mkdir(parents=True)
    (candidates / "h32.pt").write_bytes(b"old posterior")
    odd = _batch(tmp_path / "odd.csv", [0, 1, 2, 60], ["unicorn", "setosa", "hybrid", "hybrid"], ["train"] * 4)
    directory = feature_store_dir(settings)

    with pytest.raises(DatasetError) as refused:
        ingest(settings, odd, campaign="live")
    message = str(refused.value)
    assert (
        "odd.csv" in message and "classes ['hybrid', 'unicorn'] are not among the classes of campaign 'live'" in message
    )
    assert "allow_new_classes" in message
    assert open_feature_store(directory).n_appended == 0 and not any("odd/" in i for i in store.item_rows("live"))

    report = ingest(settings, odd, campaign="live", allow_new_classes=True)
    assert report.new_classes == ("hybrid", "unicorn") and report.n_labeled == 4
    classes = ["setosa", "versicolor", "virginica", "hybrid", "unicorn"]
    assert store.classes("live") == classes and list(open_feature_store(directory).classes) == classes
    labels = store.current_labels("live")
    assert [labels[f"odd/b{i}"] for i in range(4)] == [4, 0, 3, 3]
    assert not candidates.exists() and len(list(candidates.parent.glob("candidates-before-new-classes-*"))) == 1

    again = ingest(settings, odd, campaign="live")  # known now: no flag needed, nothing added
    assert (again.new_classes, again.skipped_existing, again.n_labeled) == ((), 4, 0)
    prepare_campaign(sibling, store, simulate=False)  # a campaign sharing the store follows its classes
    assert store.classes("sibling") == classes and "odd/b0" not in store.item_rows("sibling")


def test_pool_only_npz_into_a_bundled_campaign_maps_labels_by_class_name(tmp_path):
    settings = load_settings(None, {"workspace": tmp_path / "w", "dataset": {"name": "wine"}})
    store = LabelStore(settings.store_url)
    prepare_campaign(settings, store, simulate=False)
    features = open_feature_store(feature_store_dir(settings))
    wine = skd.load_wine()
    originals = features.ids[features.rows_train][:6]
    rows = [int(i.split("-")[1]) for i in originals]
    classes = np.array([*wine.target_names[::-1], "unused"])  # the file's own class order, one name never used
    y = np.array([int(np.flatnonzero(classes == wine.target_names[wine.target[r]])[0]) for r in rows])
    y[[1, 4]] = -1
    path = tmp_path / "lab2.npz"
    np.savez(path, x_train=wine.data[rows], y_train=y, classes=classes, ids_train=np.array([f"s{r}" for r in rows]))

    report = ingest(settings, path, campaign=settings.campaign_name, id_prefix="lab2:")
    assert (report.n_pool, report.n_labeled, report.n_test) == (6, 4, 0)
    features = open_feature_store(feature_store_dir(settings))
    copies = features.row_of([f"lab2:s{r}" for r in rows])
    np.testing.assert_allclose(features.features[copies], features.features[features.row_of(originals)], atol=1e-6)
    labels = store.current_labels(settings.campaign_name)
    for r, labeled in zip(rows, y >= 0, strict=True):
        assert labels.get(f"lab2:s{r}") == (int(wine.target[r]) if labeled else None)
    assert set(store.unlabeled_pool(settings.campaign_name)) == {f"lab2:s{rows[1]}", f"lab2:s{rows[4]}"}


def test_refusals_name_the_campaign_and_change_nothing(tmp_path):
    settings = load_settings(
        None, {"workspace": tmp_path / "w", "dataset": {"name": "iris"}, "campaign": {"name": "sim", "initial": 9}}
    )
    store = LabelStore(settings.store_url)
    prepare_campaign(settings, store, simulate=True)
    columns = {"label_column": "label", "id_column": "id"}  # the campaign's dataset is bundled, not a table
    mixed = _batch(tmp_path / "mixed.csv", [0, 1], [_name(0), None], ["train", "train"])
    with pytest.raises(StoreError, match=r"campaign 'sim' is simulated .* e\.g\. 'mixed/b1'"):
        ingest(settings, mixed, campaign="sim", **columns)
    labeled = _batch(tmp_path / "labeled.csv", [0, 1], [_name(0), _name(1)], ["train", "train"])
    assert ingest(settings, labeled, campaign="sim", **columns).n_labeled == 2
    with pytest.raises(StoreError, match="unknown campaign 'nope'"):
        ingest(settings, labeled, campaign="nope", **columns)
    wine = tmp_path / "wine.npz"
    np.savez(wine, x_train=skd.load_wine().data[:3])
    with pytest.raises(
        DatasetError, match=r"wine\.npz: items have features of shape \(13,\), the standardisation given is for \(4,\)"
    ):
        ingest(settings, wine, campaign="sim")
    store.start_round("sim", 1)
    with pytest.raises(StoreError, match=r"round 1 is unfinished .* ingest between rounds"):
        ingest(settings, labeled, campaign="sim", **columns)
    assert open_feature_store(feature_store_dir(settings)).n_appended == 2


def test_next_round_trains_on_ingested_labels_scores_new_pool_items_and_tests_on_new_test_items(
    tmp_path, prefect_no_heartbeat
):
    from flows.rounds import run_round

    settings, store = _live(tmp_path, update="belief", model={"steps": 40, "family": "laplace"})
    first = run_round(settings)
    assert first["round"] == 1 and first["n_labeled"] == len(store.current_labels("live")) >= 10
    n_pool = first["pool_size"]

    labels = [_name(0), _name(1), "hybrid", None, None, None, _name(50), "hybrid"]
    batch = _batch(tmp_path / "batch.csv", [0, 1, 2, 3, 4, 5, 50, 100], labels, ["train"] * 6 + ["test"] * 2)
    report = ingest(settings, batch, campaign="live", allow_new_classes=True)
    assert (report.n_pool, report.n_labeled, report.n_test, report.new_classes) == (6, 3, 2, ("hybrid",))

    wide = settings.model_copy(update={"campaign": settings.campaign.model_copy(update={"k": 200})})
    second = run_round(wide)  # belief update from scratch for the 4-class model, then from its posterior
    assert second["round"] == 2 and second["n_labeled"] == first["n_labeled"] + 3
    assert second["pool_size"] == n_pool - first["n_queued"] + 3
    queued = {q.item_id: q for q in store.queued("live", round_=2)}
    assert {"batch/b3", "batch/b4", "batch/b5"} <= set(queued)  # the new pool items were scored and queued
    assert all(q.score is not None and 0 <= q.predicted < 4 for q in queued.values())
    assert 0.0 <= second["test_accuracy"] <= 1.0


def test_a_store_written_before_the_standardisation_was_recorded_recovers_it(tmp_path):
    settings, _ = _live(tmp_path)
    meta_path = feature_store_dir(settings) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("standardization", "n_appended")}))
    assert open_feature_store(feature_store_dir(settings)).standardization is None
    report = ingest(settings, _standard_batch(tmp_path), campaign="live")  # re-imports the original CSV
    assert report.n_pool == 8
    features = open_feature_store(feature_store_dir(settings))
    np.testing.assert_allclose(
        features.features[features.row_of(["batch/b3"])], features.features[features.row_of(["iris-003"])], atol=1e-6
    )


def test_an_ingest_killed_while_its_feature_store_is_swapped_is_rerun_safely(tmp_path):
    """``beliefloop ingest`` SIGKILLed between moving the old feature store aside and renaming the new one in,
    then run again: the campaign gets the file's items and labels once, its feature store the rows once."""
    settings, store = _live(tmp_path)
    n_labels, directory = len(store.current_labels("live")), feature_store_dir(settings)
    n_rows = len(open_feature_store(directory).ids)
    command = [sys.executable, "-m", "flows", "ingest", str(_standard_batch(tmp_path)), "--workspace"]
    command += [str(settings.workspace), "--campaign", "live", "--label-column", "label", "--id-column", "id"]
    killed = subprocess.run(
        command, env={**os.environ, "BELIEFLOOP_KILL_AT": "feature_store_swap"}, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "8 pool items (4 labels recorded), 2 test items" in again.stdout

    features = open_feature_store(directory)
    assert len(features.ids) == n_rows + 10 and features.n_appended == 10
    features.verify()
    assert len(store.current_labels("live")) == n_labels + 4
    assert {"batch/b8", "batch/b9"} <= set(store.item_rows("live", "test"))
    assert not [p.name for p in directory.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_a_table_with_categories_and_gaps_ingests_rows_encoded_as_the_campaign_was(tmp_path):
    """A campaign on a table with a category column and missing numbers: ingested rows get the same features (the
    same one-hot columns, gaps imputed with the first import's mean and flagged), and a value it never had is
    refused with its row, leaving the campaign as it was."""
    rng = np.random.default_rng(0)
    n = 60
    frame = _iris_table(np.arange(n), IRIS.target_names[IRIS.target[:n]].astype(object), ["train"] * n, None)
    frame["id"] = [f"s{i}" for i in range(n)]
    frame["site"] = rng.choice(["north", "south"], n)
    frame.loc[[3, 7], "f1"] = np.nan
    frame.loc[(frame.index % 4 == 0) & (frame.index < 50), "label"] = None
    frame.loc[50:, "split"] = "test"
    original = tmp_path / "sites.csv"
    frame.to_csv(original, index=False)
    settings = load_settings(
        None,
        {
            "workspace": tmp_path / "w",
            "dataset": {"name": str(original), "label_column": "label", "id_column": "id"},
            "campaign": {"name": "sites"},
        },
    )
    store = LabelStore(settings.store_url)
    prepare_campaign(settings, store, simulate=False)
    features = open_feature_store(feature_store_dir(settings))
    assert features.feature_names == ("f0", "f1", "f1 missing", "f2", "f3", "site=north", "site=south")

    batch = frame.iloc[[3, 5]].copy()  # a row with a gap and one without, under new ids
    batch["id"] = ["n3", "n5"]
    batch.drop(columns="split").to_csv(tmp_path / "more.csv", index=False)
    ingest(settings, tmp_path / "more.csv", campaign="sites")
    features = open_feature_store(feature_store_dir(settings))
    copies, originals = features.row_of(["more/n3", "more/n5"]), features.row_of(["s3", "s5"])
    np.testing.assert_allclose(features.features[copies], features.features[originals], rtol=0, atol=1e-6)

    batch["id"], batch["site"] = ["m0", "m1"], ["north", "east"]
    batch.drop(columns="split").to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(DatasetError, match=r"row 1 \(id 'm1'\), column 'site': 'east' is not one of the values"):
        ingest(settings, tmp_path / "odd.csv", campaign="sites")
    assert open_feature_store(feature_store_dir(settings)).n_appended == 2


def test_new_pool_items_get_a_new_stop_set_and_the_stability_count_starts_over(tmp_path, prefect_no_heartbeat):
    """A stop set blind to ingested items would call the model stable before it has seen them."""
    from flows.rounds import run_round

    settings, store = _live(tmp_path, stopping={"items": 1000, "agreement": 0.5, "rounds": 1})
    stop_set = settings.models_dir / "live" / "stop_set" / "items.npz"
    first, second = run_round(settings), run_round(settings)
    assert "stop_set_agreement" not in first and second["stop_set_agreement"] >= 0.5 and second["stopping_note"]
    with np.load(stop_set) as saved:
        before = set(saved["ids"])
    assert before == set(store.unlabeled_pool("live")) | {q.item_id for q in store.queued("live")}  # 1000 > pool

    ingest(settings, _standard_batch(tmp_path), campaign="live")
    third, fourth = run_round(settings), run_round(settings)
    with np.load(stop_set) as saved:
        after = set(saved["ids"])
    new_pool = {f"batch/b{i}" for i in range(4, 8)}
    assert new_pool <= after and not new_pool & before
    assert "stop_set_agreement" not in third and third["stopping_note"] is None  # nothing comparable yet
    assert fourth["stop_set_agreement"] >= 0.5 and fourth["stopping_note"]


def test_a_live_campaign_stopped_as_stable_queues_again_once_items_are_ingested(tmp_path, prefect_no_heartbeat):
    """``stopping.when_stable: stop``: a stable round trains on the answers but asks for nothing new; the items an
    ingest adds get a new stop set, so the next round is not stable and queues a batch."""
    from data.store import LabelAnswer
    from flows.rounds import run_round

    stopping = {"items": 1000, "agreement": 0.5, "rounds": 1, "when_stable": "stop"}
    settings, store = _live(tmp_path, stopping=stopping)

    def answer_pending() -> None:  # a person answers every pending item with its true class
        pending = store.queued("live", status="pending")
        answers = [LabelAnswer(q.item_id, int(IRIS.target[int(q.item_id.split("-")[1])])) for q in pending]
        store.record_labels("live", answers, annotator="ann")

    first = run_round(settings)
    answer_pending()
    second = run_round(settings)
    assert first["n_queued"] == 5 and not first["stopped_when_stable"]
    assert second["stopping_note"] and second["stopped_when_stable"] and second["n_queued"] == 0
    assert second["n_labeled"] == first["n_labeled"] + 5  # the answers were trained on
    assert not store.queued("live", status="pending")

    ingest(settings, _standard_batch(tmp_path), campaign="live")
    third = run_round(settings)
    assert third["stopping_note"] is None and not third["stopped_when_stable"] and third["n_queued"] == 5
