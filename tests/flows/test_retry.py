"""Transient failures: a locked SQLite database and an unreachable MLflow server, for real; retried with backoff, then
one line that says the labels are safe."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from data.store import LabelStore
from flows.failures import LABELS_SAFE
from flows.retry import RoundFailed, transient_cause, with_retries


@pytest.fixture()
def locked_database(tmp_path):
    """A SQLite file that another connection holds an exclusive lock on, and an engine that does not wait for it;
    ``release()`` ends the lock."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    holder = sa.create_engine(url).connect()
    holder.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    holder.commit()
    holder.exec_driver_sql("BEGIN EXCLUSIVE")
    writer = sa.create_engine(url, connect_args={"timeout": 0})

    def write() -> str:
        with writer.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        return "written"

    yield write, holder.rollback
    holder.close()
    writer.dispose()


def test_a_locked_database_is_retried_with_backoff_until_it_answers(locked_database):
    write, release = locked_database
    calls, notices = [], []

    def attempt() -> str:
        calls.append(1)
        if len(calls) == 3:
            release()
        return write()

    assert with_retries(attempt, what="a write", labels_at="db", notify=notices.append, backoff=0.01) == "written"
    assert len(calls) == 3
    assert [n.split(";")[1].strip() for n in notices] == [
        "trying again in 0.01 s (1 of 3 tries)",
        "trying again in 0.02 s (2 of 3 tries)",
    ]
    assert all("database is locked" in n for n in notices)


def test_a_lasting_failure_ends_in_one_line_saying_the_labels_are_safe(locked_database):
    write, _ = locked_database
    with pytest.raises(RoundFailed) as failure:
        with_retries(write, what="a round of campaign c", labels_at="sqlite:///w/labels.db", notify=print, backoff=0)
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith("a round of campaign c failed 3 times on a transient error: (sqlite3.OperationalError)")
    assert "the labels are safe in sqlite:///w/labels.db" in message
    assert isinstance(transient_cause(failure.value), sa.exc.OperationalError)


def test_other_errors_are_not_retried():
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        with_retries(broken, what="x", labels_at="db", notify=print, backoff=0)
    assert calls == [1]


def test_a_round_with_its_mlflow_server_down_fails_in_one_line_and_keeps_the_labels(queued_workspace):
    """``beliefloop round`` against a tracking URI nobody serves: three tries, each noticed, then one line; the
    answers stay, and no round is left running (the tracking store is reached before the round is recorded)."""
    store = LabelStore.for_workspace(queued_workspace)
    labels = store.current_labels("digits8")
    dataset = Path(store.dataset_of("digits8"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe closes
    env = {
        **os.environ,
        "BELIEFLOOP_TRACKING__URI": f"http://127.0.0.1:{port}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",  # MLflow's own retries would take minutes
    }
    command = [sys.executable, "-m", "flows", "round", "--dataset", str(dataset), "--workspace", str(queued_workspace)]
    params = ["--params", str(dataset.with_name("params.yaml"))]
    result = subprocess.run([*command, *params], env=env, capture_output=True, text=True, timeout=600)

    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]  # the environment failed
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(f"error: the MLflow tracking store is unreachable: http://127.0.0.1:{port}/")
    assert "the round was tried 3 times" in errors[0] and errors[0].endswith(LABELS_SAFE)
    assert result.stdout.count("trying again in") == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert store.current_labels("digits8") == labels
    assert store.unfinished_rounds("digits8") == []  # the tracking store is tried before the round is recorded
