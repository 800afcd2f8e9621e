"""``beliefloop doctor`` on a real workspace broken on purpose: a round SIGKILLed before its MLflow logging, a
truncated checkpoint, an answer that left its item pending, a feature store whose bytes changed."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime

from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from data.round_lock import round_lock
from data.store import LabelStore
from flows.cli import app

CAMPAIGN = "iris-powerbald-seed0"
SIMULATE = ["simulate", "--dataset", "iris", "--k", "5", "--initial", "9", "--samples", "4"]
FAST = {"BELIEFLOOP_MODEL__STEPS": "40", "BELIEFLOOP_SELECTION__CANDIDATES": "[]"}
runner = CliRunner()


def _doctor(workspace, *args):
    result = runner.invoke(app, ["doctor", "--workspace", str(workspace), "--format", "json", *args])
    assert result.exit_code in (0, 1), result.output + repr(result.exception)
    return result.exit_code, json.loads(result.stdout)


def _statuses(findings, status):
    return sorted((f["check"], f["subject"]) for f in findings if f["status"] == status)


def test_doctor_finds_and_repairs_a_broken_workspace_and_the_round_is_rerun(tmp_path):
    workspace = tmp_path / "w"
    assert runner.invoke(app, [*SIMULATE, "--rounds", "1", "--workspace", str(workspace)], env=FAST).exit_code == 0
    assert _doctor(workspace)[0] == 0
    killed = subprocess.run(
        [sys.executable, "-m", "flows", *SIMULATE, "--rounds", "2", "--workspace", str(workspace)],
        env={**os.environ, **FAST, "BELIEFLOOP_KILL_AT": "before_logging"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    store = LabelStore.for_workspace(workspace)
    pending = store.queued(CAMPAIGN, round_=2, status="pending")[0].item_id
    with sqlite3.connect(workspace / "labels.db") as conn:  # an answer written without its queue update
        conn.execute(
            "INSERT INTO labels (campaign, item_id, label, annotator, round, created_at) VALUES (?, ?, 0, 'x', 2, ?)",
            (CAMPAIGN, pending, datetime.now(UTC).isoformat()),
        )
    checkpoint = workspace / "models" / CAMPAIGN / "candidates" / "mc_dropout.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    features = workspace / "datasets" / "iris" / "features.npy"
    shutil.copy(features, tmp_path / "features.npy")
    data = bytearray(features.read_bytes())
    data[-4:] = b"\x7f\x7f\x7f\x7f"  # one value changed in place: same shape, another hash
    features.write_bytes(bytes(data))

    with round_lock(store, CAMPAIGN):  # while a process holds the round lock, round 2 is running, not abandoned
        rounds = [f for f in _doctor(workspace)[1] if f["check"] == "rounds"]
    assert [(f["status"], f["detail"].split(":")[0]) for f in rounds] == [("ok", "round 2 is running now")]

    code, rows = _doctor(workspace)
    expected = [
        ("checkpoints", f"{CAMPAIGN} mc_dropout.pt"),
        ("feature store", "iris"),
        ("mlflow runs", f"{CAMPAIGN} round 2"),
        ("queue", f"{CAMPAIGN} item {pending}"),
        ("rounds", f"{CAMPAIGN} round 2"),
    ]
    assert code == 1 and _statuses(rows, "problem") == expected, rows
    assert store.running_rounds(CAMPAIGN) == [2] and checkpoint.exists()  # nothing changed without --repair

    code, rows = _doctor(workspace, "--repair")
    assert code == 1 and _statuses(rows, "problem") == [("feature store", "iris")], rows
    assert _statuses(rows, "repaired") == [e for e in expected if e[0] != "feature store"]
    assert store.running_rounds(CAMPAIGN) == [] and store.unfinished_rounds(CAMPAIGN) == [2]
    assert store.queued(CAMPAIGN, round_=2, status="pending")[0].item_id != pending
    assert not checkpoint.exists() and checkpoint.with_name("mc_dropout.pt.corrupt").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(CAMPAIGN)
    run = client.search_runs([experiment.experiment_id], filter_string="tags.`beliefloop.round` = '2'")[0]
    assert run.info.status == "FAILED"

    shutil.copy(tmp_path / "features.npy", features)
    assert _doctor(workspace)[0] == 0
    rerun = runner.invoke(app, [*SIMULATE, "--rounds", "2", "--workspace", str(workspace)], env=FAST)
    assert rerun.exit_code == 0, rerun.output
    assert store.unfinished_rounds(CAMPAIGN) == [] and len(store.queued(CAMPAIGN, round_=2)) == 5
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    code, rows = _doctor(workspace)
    assert code == 0 and _statuses(rows, "problem") == [] and _statuses(rows, "repaired") == []
