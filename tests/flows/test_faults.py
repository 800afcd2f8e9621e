"""Faults injected by the tests into real workspaces: a truncated checkpoint, a missing feature-store file, an
unreachable MLflow server, a locked label store and a full disk under the artifacts. Each ends in bounded retries
and one line on stderr (exit 3) that says the labels are safe, and the label store is as it was."""

import errno
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from data.store import LabelStore
from flows.cli import app
from flows.failures import LABELS_SAFE

CAMPAIGN = "iris-powerbald-seed0"
SIMULATE = ["simulate", "--dataset", "iris", "--k", "5", "--initial", "9", "--samples", "4"]
FAST = {"BELIEFLOOP_MODEL__STEPS": "40", "BELIEFLOOP_SELECTION__CANDIDATES": "[]"}
runner = CliRunner()


def _cli(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env={**FAST, **(env or {})})


def _fault(result) -> str:
    """The one line of a fault: exit 3, no traceback, ends by saying the labels are safe."""
    assert result.exit_code == 3, result.output + repr(result.exception)
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.rstrip().endswith(LABELS_SAFE), result.stderr
    return result.stderr


def _snapshot(workspace: Path) -> dict[str, list]:
    """Every row of the label store's tables (what a fault must leave as it was)."""
    with sqlite3.connect(workspace / "labels.db") as conn:
        tables = ("campaigns", "items", "labels", "retractions", "queue", "rounds")
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


@pytest.fixture(scope="module")
def _one_round(tmp_path_factory) -> Path:
    workspace = tmp_path_factory.mktemp("faults") / "w"
    result = _cli(*SIMULATE, "--rounds", "1", "--workspace", str(workspace))
    assert result.exit_code == 0, result.output
    return workspace


@pytest.fixture()
def campaign(_one_round, tmp_path) -> Path:
    """A copy of an iris campaign after round 1 (5 items pending); MLflow runs stay in the original's store."""
    workspace = shutil.copytree(_one_round, tmp_path / "w")
    (workspace / "mlflow.db").unlink()  # each test has a tracking store of its own
    return workspace


def test_a_missing_feature_store_file_is_one_line_and_starts_no_round(campaign):
    before = _snapshot(campaign)
    (campaign / "datasets" / "iris" / "features.npy").unlink()
    error = _fault(_cli(*SIMULATE, "--rounds", "2", "--workspace", str(campaign)))
    assert f"{campaign / 'datasets' / 'iris' / 'features.npy'}: missing from the feature store" in error
    assert _snapshot(campaign) == before


def test_an_unreachable_tracking_server_is_retried_then_one_line_and_starts_no_round(campaign):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = _snapshot(campaign)
    env = {
        "BELIEFLOOP_TRACKING__URI": f"http://127.0.0.1:{port}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    started = time.monotonic()
    error = _fault(_cli(*SIMULATE, "--rounds", "2", "--workspace", str(campaign), env=env))
    assert time.monotonic() - started > 2  # urllib3 backed off between the 3 attempts (1 s, 2 s)
    assert f"the MLflow tracking store is unreachable: http://127.0.0.1:{port}/api/2.0/mlflow/" in error
    assert "after 2 retries" in error
    assert _snapshot(campaign) == before  # round 2 was not recorded as running, the oracle did not answer


def test_a_locked_label_store_is_retried_then_one_line_and_the_answer_goes_in_once_unlocked(campaign):
    item = LabelStore.for_workspace(campaign).queued(CAMPAIGN, status="pending")[0].item_id
    answer = ["label", "--item", item, "--label", "1", "--annotator", "ann", "--workspace", str(campaign)]
    before = _snapshot(campaign)
    holder = sqlite3.connect(campaign / "labels.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's writer, holding the lock
    try:
        started = time.monotonic()
        error = _fault(_cli(*answer, env={"BELIEFLOOP_STORE__BUSY_TIMEOUT": "0.3"}))
        assert time.monotonic() - started >= 0.5 + 1.0  # the pauses between the three attempts
        assert "stayed locked by another connection through 3 attempts (0.3 s wait each)" in error
        assert _snapshot(campaign) == before
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _cli(*answer).exit_code == 0
    assert LabelStore.for_workspace(campaign).label_history(CAMPAIGN, item) == [(1, "ann", 1)]


def test_a_truncated_checkpoint_is_set_aside_and_the_belief_update_says_it_retrains(tmp_path):
    workspace = tmp_path / "w"
    belief = {"BELIEFLOOP_MODEL__FAMILY": "laplace", "BELIEFLOOP_UPDATE": "belief"}
    assert _cli(*SIMULATE, "--rounds", "1", "--workspace", str(workspace), env=belief).exit_code == 0
    checkpoint = workspace / "models" / CAMPAIGN / "candidates" / "laplace.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:300])  # a copy cut short
    result = _cli(*SIMULATE, "--rounds", "2", "--workspace", str(workspace), env=belief)
    assert result.exit_code == 0, result.output
    assert f"warning: {checkpoint}: unreadable checkpoint (truncated or corrupt?)" in result.stdout
    assert "candidate laplace: no readable posterior left; retraining on every label" in result.stdout
    _, round_2 = LabelStore.for_workspace(workspace).round_metrics(CAMPAIGN)
    assert round_2["n_fitted/laplace"] == round_2["n_labeled"] == 14  # all labels, not round 2's 5 new ones
    aside = checkpoint.with_name("laplace.pt.corrupt")
    assert aside.read_bytes() and len(aside.read_bytes()) == 300  # kept for inspection, never loaded
    from flows.models import read_checkpoint

    assert read_checkpoint(checkpoint)["round"] == 2


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"a full disk needs a small tmpfs, and mounting one failed here (needs root): {error}")


def test_a_full_disk_under_the_artifacts_is_retried_then_one_line_and_the_round_resumes(tmp_path):
    workspace = tmp_path / "w"
    artifacts = workspace / "mlartifacts"
    _mount_tmpfs(artifacts, "2m")
    try:
        filler = artifacts / "filler"
        with open(filler, "wb") as handle:  # fill the volume up to its last byte
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC
        error = _fault(_cli(*SIMULATE, "--rounds", "1", "--workspace", str(workspace)))
        assert "no space left on device" in error
        store = LabelStore.for_workspace(workspace)
        assert store.unfinished_rounds(CAMPAIGN) == [1] and len(store.queued(CAMPAIGN, round_=1)) == 5
        labels_after_fault = store.current_labels(CAMPAIGN)

        filler.unlink()
        assert _cli(*SIMULATE, "--rounds", "1", "--workspace", str(workspace)).exit_code == 0
        assert store.unfinished_rounds(CAMPAIGN) == [] and store.current_labels(CAMPAIGN) == labels_after_fault
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM queue")).scalar() == 5
        client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(CAMPAIGN)
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.`beliefloop.round` = '1'")
        assert [r.info.status for r in runs] == ["FINISHED"]
        for key in runs[0].data.metrics:
            assert [m.step for m in client.get_metric_history(runs[0].info.run_id, key)] == [1], key
        assert "queued_batch.csv" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    finally:
        subprocess.run(["umount", "-l", str(artifacts)], check=False)
