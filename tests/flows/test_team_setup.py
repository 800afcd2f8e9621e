"""README "Team setup", command for command: a PostgreSQL label store, `mlflow server` on PostgreSQL, a Dask cluster
(`dask scheduler`, `dask worker`) scoring the pool, and a round run against all of them."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from data.store import LabelStore, database_url

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(command: list[str], ready, what: str, env=None) -> subprocess.Popen:
    """Start a server as its users do; wait (up to 300 s) until ``ready()``."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"{what} exited: {process.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{what} did not start within 300 s"
        time.sleep(1)
    return process


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture()
def team(tmp_path, postgres_database):
    """The README's servers on 127.0.0.1: yields (label store URL, tracking URI, Dask scheduler address)."""
    labels_url, mlflow_db = postgres_database(), postgres_database()
    mlflow_port, dask_port = _free_port(), _free_port()
    processes = []
    try:
        processes.append(
            _start(
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    database_url(mlflow_db),  # postgresql+psycopg://…
                    "--artifacts-destination",
                    str(tmp_path / "mlartifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                    "--workers",
                    "1",
                ],
                lambda: _answers(f"http://127.0.0.1:{mlflow_port}/health"),
                "mlflow server",
            )
        )
        scheduler = f"tcp://127.0.0.1:{dask_port}"
        dask = str(BIN / "dask")
        no_dashboard = ["--no-dashboard"]
        processes.append(
            _start(
                [dask, "scheduler", "--host", "127.0.0.1", "--port", str(dask_port), *no_dashboard],
                lambda: _listens(dask_port),
                "dask scheduler",
            )
        )
        processes.append(
            _start(
                [dask, "worker", scheduler, "--nworkers", "1", "--nthreads", "1", *no_dashboard],
                lambda: _workers(scheduler) >= 1,
                "dask worker",
            )
        )
        yield labels_url, f"http://127.0.0.1:{mlflow_port}", scheduler
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)


def _workers(scheduler: str) -> int:
    from distributed import Client

    with Client(scheduler, timeout=10) as client:
        return len(client.scheduler_info()["workers"])


def _scheduler_task_prefixes(scheduler: str) -> set[str]:
    from distributed import Client

    with Client(scheduler, timeout=10) as client:
        return set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))


def test_a_round_on_postgresql_an_mlflow_server_and_a_dask_cluster(team, tmp_path):
    labels_url, tracking_uri, scheduler = team
    env = {
        **os.environ,
        "BELIEFLOOP_STORE__URL": labels_url,
        "BELIEFLOOP_TRACKING__URI": tracking_uri,
        "BELIEFLOOP_MODEL__STEPS": "30",
        "BELIEFLOOP_SELECTION__CANDIDATES": "[]",
        "BELIEFLOOP_TRACKING__REGISTER_MODEL": "true",
    }
    args = ["--dataset", "iris", "--rounds", "1", "--k", "5", "--initial", "9", "--samples", "4"]
    cluster = ["--dask-address", scheduler, "--shards", "2"]
    workspace = ["--workspace", str(tmp_path / "w"), "--json", str(tmp_path / "rounds.json")]
    result = subprocess.run(
        [sys.executable, "-m", "flows", "simulate", *args, *cluster, *workspace],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((tmp_path / "rounds.json").read_text())[0]["n_queued"] == 5

    # The label store is the PostgreSQL database (nothing in the workspace), the scoring ran on the cluster.
    assert not (tmp_path / "w" / "labels.db").exists() and not (tmp_path / "w" / "mlflow.db").exists()
    store = LabelStore(labels_url)
    assert store.round_metrics("iris-powerbald-seed0")[0]["n_queued"] == 5
    store.close()
    assert any("score" in prefix for prefix in _scheduler_task_prefixes(scheduler))

    # The MLflow server holds the round, its artifacts (proxied to its destination) and the registered model.
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("iris-powerbald-seed0")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.`beliefloop.round` = '1'")
    assert {"queued_batch.csv", "bayes_factors.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert list((tmp_path / "mlartifacts").rglob("queued_batch.csv"))
    (version,) = client.search_model_versions("name = 'iris-powerbald-seed0-model'")
    assert version.tags["beliefloop.round"] == "1" and version.run_id == run.info.run_id
