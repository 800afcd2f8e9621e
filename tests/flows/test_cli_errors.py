"""User-facing CLI failures: one clear line on stderr, a non-zero exit, and no files left behind."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.settings import SettingsError

runner = CliRunner()


def _subprocess(*args, env=None):
    """The real ``beliefloop`` process (what Prefect logs to stderr shows up there too)."""
    return subprocess.run(
        [sys.executable, "-m", "flows", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _fails(*args, env=None):
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_campaign_names_cannot_leave_the_workspace(tmp_path):
    workspace = tmp_path / "a" / "b" / "w"
    for command in (["simulate", "--dataset", "iris"], ["round", "--dataset", "iris"], ["queue", "list"]):
        error = _fails(*command, "--campaign", "../../../escaped", "--workspace", str(workspace))
        assert "campaign name '../../../escaped' is not allowed" in error
    assert list(tmp_path.iterdir()) == []


def test_unparsable_environment_value_is_one_line_and_debug_shows_the_traceback(tmp_path):
    env = {"BELIEFLOOP_SELECTION__CANDIDATES": "not json"}
    args = ["select", "--dataset", "wine", "--workspace", str(tmp_path / "w")]
    error = _fails(*args, env=env)
    assert 'field "selection"' in error and "must be JSON" in error
    debug = runner.invoke(app, ["--debug", *args], env=env)
    assert isinstance(debug.exception, SettingsError) and debug.exit_code == 1


def test_parquet_list_labels_are_one_line(tmp_path):
    path = tmp_path / "lists.parquet"
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [["a"], ["b"], ["a", "b"]]}).to_parquet(path)
    error = _fails(
        "prepare",
        "--dataset",
        str(path),
        "--workspace",
        str(tmp_path / "w"),
        env={"BELIEFLOOP_DATASET__LABEL_COLUMN": "y"},
    )
    assert "lists.parquet: label column 'y' in row 0 (id 'row-0')" in error


def test_failure_inside_a_flow_is_one_line(tmp_path):
    broken = tmp_path / "broken.npz"
    np.savez(broken, x_train=np.zeros((3, 2)), x_test=np.zeros((2, 2)))
    result = _subprocess("simulate", "--dataset", str(broken), "--workspace", str(tmp_path / "w"))
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"error: {broken}: missing key 'y_test'; found keys ['x_test', 'x_train']"
    ]


def test_prefect_server_missing_its_startup_timeout_is_one_line(tmp_path):
    env = {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1",
        "PREFECT_API_URL": "",  # not the session's server: this command must start a temporary one
    }
    result = _subprocess("select", "--dataset", "wine", "--workspace", str(tmp_path / "w"), env=env)
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "error: Prefect's temporary server did not start within 1 s; raise "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or point PREFECT_API_URL at a running server"
    ]


def test_prefect_server_gets_a_long_startup_timeout_unless_the_user_set_one(monkeypatch):
    from flows import cli

    for key in ("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL"):
        monkeypatch.delenv(key, raising=False)  # restored (removed) after the test
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    cli._prefect_defaults()
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "300"
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "45")
    cli._prefect_defaults()
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "45"


@pytest.mark.parametrize(
    "command",
    [
        ["label", "--item", "train-1", "--label", "0"],
        ["skip", "--item", "train-1"],
        ["queue", "list"],
        ["ingest", "new.csv"],
        ["ui"],
    ],
    ids=["label", "skip", "queue-list", "ingest", "ui"],
)
def test_commands_on_a_campaign_create_no_workspace(tmp_path, command):
    missing = tmp_path / "no" / "such" / "dir"
    assert f"workspace {missing} does not exist" in _fails(*command, "--workspace", str(missing))
    if command != ["ui"]:
        (tmp_path / "empty").mkdir()
        assert "no label store" in _fails(*command, "--workspace", str(tmp_path / "empty"))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ([] if command == ["ui"] else ["empty"])


def test_an_empty_workspace_value_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = _fails("queue", "list", env={"BELIEFLOOP_WORKSPACE": ""})
    assert "workspace: Value error, the workspace must not be empty" in error
    assert list(tmp_path.iterdir()) == []


def test_queue_list_refuses_an_unknown_status(tmp_path):
    from data.store import LabelStore

    LabelStore.for_workspace(tmp_path).create_campaign("c", "iris", ["a", "b"])
    error = _fails("queue", "list", "--status", "bogus", "--workspace", str(tmp_path))
    assert "unknown queue status 'bogus'; expected one of ['pending', 'labeled', 'skipped']" in error


def test_a_file_that_is_not_an_npz_archive_is_named(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    error = _fails("prepare", "--dataset", str(junk), "--workspace", str(tmp_path / "w"))
    assert f"{junk}: not a valid .npz file" in error and "pickle" not in error


@pytest.mark.parametrize("command", ["simulate", "round"])
def test_a_campaign_on_a_bad_dataset_creates_no_workspace(tmp_path, command):
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    workspace = tmp_path / "w"
    assert "not a valid .npz file" in _fails(command, "--dataset", str(junk), "--workspace", str(workspace))
    assert not workspace.exists()


def test_a_simulation_on_unlabeled_data_creates_no_workspace(tmp_path):
    partly = tmp_path / "partly.npz"
    x = np.arange(24, dtype=np.float64).reshape(12, 2)
    np.savez(partly, x_train=x[:8], y_train=np.array([0, 1] * 3 + [-1, -1]), x_test=x[8:], y_test=np.array([0, 1] * 2))
    error = _fails("simulate", "--dataset", str(partly), "--workspace", str(tmp_path / "w"))
    assert "has 2 unlabeled training rows" in error
    assert not (tmp_path / "w").exists()  # refused before the feature store, label store or MLflow store
