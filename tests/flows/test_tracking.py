"""The campaign tracker against a real MLflow SQLite store, read back by an independent client."""

import sqlite3

from mlflow.tracking import MlflowClient

from flows.tracking import CampaignTracker, tracking_client


def test_one_batch_per_round_within_mlflow_limits_and_nothing_logged_twice(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = CampaignTracker(uri, (tmp_path / "artifacts").as_uri(), "c")
    run_id = tracker.round_run(tracker.campaign_run({"seed": 0}), 1)
    metrics = {f"m{i}": float(i) for i in range(1500)}  # more than one MLflow batch holds
    params = {f"p{i}": i for i in range(150)}
    tracker.log_batch(run_id, metrics, step=1, params=params, tags={"beliefloop.selected": "a"})
    tracker.log_batch(run_id, {"m0": 5.0, "late": 1.0}, step=1, params={"p0": 0, "new": "x"})  # a re-run round
    tracker.log_batch(run_id, {"m0": 6.0}, step=2)

    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert len(run.data.metrics) == 1501 and run.data.metrics["m1499"] == 1499.0
    assert run.data.params == {**{f"p{i}": str(i) for i in range(150)}, "new": "x"}
    assert run.data.tags["beliefloop.selected"] == "a"
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "m0")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.0), (2, 6.0)]  # the first value at a step stands


def test_a_sqlite_tracking_store_is_created_in_wal_mode_and_read_by_any_client(tmp_path):
    """The workspace's MLflow database keeps write-ahead logging (fewer syncs per commit) in the file itself, and
    a client that knows nothing of it (another process, ``mlflow ui``) reads what was logged."""
    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    assert tracking_client(uri) is tracking_client(uri)
    tracker = CampaignTracker(uri, (tmp_path / "artifacts").as_uri(), "c")
    run_id = tracker.round_run(tracker.campaign_run({"seed": 0}), 1)
    tracker.log_batch(run_id, {"test_accuracy": 0.5}, step=1)
    assert sqlite3.connect(database).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics == {"test_accuracy": 0.5}


def test_the_tracking_database_file_alone_holds_what_a_finished_process_logged(tmp_path, database_file_after_exit):
    """DVC caches ``workspace/mlflow.db`` without its write-ahead log: after a process that logged a metric has
    exited, a copy of the file alone has the metric. The process freezes its objects as the CLI does (``gc.freeze``),
    so MLflow's connections are never closed (which would fold the log in by themselves)."""
    database = tmp_path / "mlflow.db"
    code = (
        "from flows.tracking import CampaignTracker\n"
        f"tracker = CampaignTracker('sqlite:///{database}', '{(tmp_path / 'artifacts').as_uri()}', 'c')\n"
        "tracker.log_batch(tracker.round_run(tracker.campaign_run({}), 1), {'test_accuracy': 0.75}, step=1)\n"
    )
    copy = database_file_after_exit(code, database)
    rows = sqlite3.connect(copy).execute("SELECT key, value FROM metrics").fetchall()
    assert rows == [("test_accuracy", 0.75)]


def test_a_new_tracking_database_is_a_copy_of_an_empty_one_that_mlflow_made(tmp_path, monkeypatch):
    """A new workspace's MLflow database is copied from an empty one MLflow built once (its migrations take a second
    or more): the copy has MLflow's schema and default experiment exactly as a database MLflow builds itself, and takes
    runs. A damaged copy source is dropped and MLflow builds the database."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tracking_client(f"sqlite:///{tmp_path / 'first.db'}").search_experiments()
    template = next((tmp_path / "cache" / "beliefloop").glob("mlflow-*.db"))
    assert sqlite3.connect(template).execute("SELECT count(*) FROM experiments").fetchone() == (0,)
    with sqlite3.connect(template) as db:
        db.execute("PRAGMA user_version = 7")  # a mark only a copy of this file carries

    uri = f"sqlite:///{tmp_path / 'copied.db'}"
    tracker = CampaignTracker(uri, (tmp_path / "artifacts").as_uri(), "c")
    run_id = tracker.round_run(tracker.campaign_run({"seed": 0}), 1)
    tracker.log_batch(run_id, {"test_accuracy": 0.5}, step=1)
    reference = tmp_path / "reference.db"
    MlflowClient(tracking_uri=f"sqlite:///{reference}").search_experiments()  # built by MLflow's migrations

    def schema(path):  # each statement's lines as a set: MLflow orders a table's constraints anew in every build
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
            return sorted(
                (kind, name, sorted(line.strip(" ,") for line in sql.splitlines())) for kind, name, sql in rows
            )

    def state(path):
        with sqlite3.connect(path) as db:
            default = db.execute(
                "SELECT name, artifact_location, lifecycle_stage FROM experiments WHERE experiment_id = 0"
            )
            return default.fetchall(), db.execute("SELECT * FROM alembic_version").fetchall()

    copied = tmp_path / "copied.db"
    assert sqlite3.connect(copied).execute("PRAGMA user_version").fetchone() == (7,)
    assert schema(copied) == schema(reference) and state(copied) == state(reference)
    assert MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics == {"test_accuracy": 0.5}

    template.write_bytes(b"not a database")
    rebuilt = tmp_path / "rebuilt.db"
    tracking_client(f"sqlite:///{rebuilt}").search_experiments()
    assert state(rebuilt) == state(reference) and not template.exists()
