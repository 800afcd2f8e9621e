"""Scheduled rounds: `beliefloop serve` against a real Prefect server that the test starts on 127.0.0.1.

The deployment runs rounds by itself on a 5 s interval; a run without new answers does nothing; every run is
found through Prefect's REST API.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris

from data.store import LabelAnswer, LabelStore

CLI = [sys.executable, "-m", "flows"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(condition, timeout: float, what: str, processes=()):
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            assert process.poll() is None, f"{process.args[:4]} exited: {process.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(1)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """``prefect server start`` as its users start it, with its own PREFECT_HOME; yields the API URL and env. One
    for the module's tests (each names its own deployment)."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect")),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_API_URL": api,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def healthy() -> bool:
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait(healthy, 300, "the Prefect server", [server])
        yield api, env
    finally:
        _stop(server)


def _flowers(tmp_path) -> tuple:
    """``flowers.npz``: iris with no training labels (a live campaign's cold start); returns (path, true labels)."""
    x, y = load_iris(return_X_y=True)
    path = tmp_path / "flowers.npz"
    order = np.random.default_rng(0).permutation(len(y))  # every class among the test labels
    x, y = x[order], y[order]
    np.savez(path, x_train=x[:120], y_train=np.full(120, -1), x_test=x[120:], y_test=y[120:])
    return path, y


def test_served_deployment_runs_rounds_by_itself(tmp_path, prefect_server):
    api, env = prefect_server
    path, y = _flowers(tmp_path)
    workspace = tmp_path / "w"
    command = [*CLI, "serve", "--dataset", str(path), "--workspace", str(workspace), "--interval", "5", "--k", "4"]
    serve = subprocess.Popen(
        [*command, "--stop-when-stable"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def rounds_done() -> int:
            if not (workspace / "labels.db").exists():
                return 0
            store = LabelStore.for_workspace(workspace)
            try:
                return len(store.round_metrics("flowers"))
            finally:
                store.close()

        _wait(lambda: rounds_done() >= 1, 300, "the first scheduled round", [serve])
        store = LabelStore.for_workspace(workspace)
        batch = store.queued("flowers", round_=1)
        assert len(batch) == 4  # a cold start: a random batch of k
        report = store.record_labels(
            "flowers", [LabelAnswer(q.item_id, int(y[int(q.item_id.split("-")[1])])) for q in batch], annotator="t"
        )
        assert len(report.accepted) == 4
        store.close()
        _wait(lambda: rounds_done() >= 2, 300, "a second round after the answers", [serve])

        deployment = httpx.get(f"{api}/deployments/name/scheduled_round/flowers-rounds", timeout=10).json()

        def finished_runs() -> list[dict]:
            runs = {"deployment_id": {"any_": [deployment["id"]]}, "state": {"type": {"any_": ["COMPLETED"]}}}
            body = {"flow_runs": runs}
            return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()

        # A later run finds no new answers and does nothing: more completed runs than rounds.
        _wait(lambda: len(finished_runs()) >= 3, 300, "a scheduled run without new answers", [serve])
        assert rounds_done() == 2
        runs = finished_runs()
        assert all(run["name"] == "flowers · scheduled round" for run in runs)
        assert all("flowers" in run["tags"] for run in runs)
        assert deployment["global_concurrency_limit"]["limit"] == 1
        assert deployment["parameters"]["overrides"]["stopping"] == {"when_stable": "stop"}  # every run's settings
    finally:
        _stop(serve)


def test_prefect_deploy_to_a_work_pool_and_a_worker_runs_the_round(tmp_path, prefect_server):
    """README "Team setup": `prefect work-pool create`, `prefect deploy` of the repository's prefect.yaml (its
    parameters pointed at a test campaign), a run of the deployment, `prefect worker start` runs it."""
    api, env = prefect_server
    root = Path(__file__).resolve().parents[2]
    path, _ = _flowers(tmp_path)
    workspace = tmp_path / "w"
    parameters = {
        "campaign": "flowers",
        "params": None,
        "force": False,
        "overrides": {"workspace": str(workspace), "dataset": {"name": str(path)}, "campaign": {"name": "flowers"}},
    }

    def prefect(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"prefect {args}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        return result.stdout

    prefect("work-pool", "create", "beliefloop", "--type", "process")
    prefect("deploy", "--name", "my-campaign-rounds", "--params", json.dumps(parameters))
    prefect("deployment", "run", "scheduled_round/my-campaign-rounds")
    prefect("worker", "start", "--pool", "beliefloop", "--run-once")

    deployment = httpx.get(f"{api}/deployments/name/scheduled_round/my-campaign-rounds", timeout=10).json()
    assert deployment["work_pool_name"] == "beliefloop"
    body = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}}

    def states() -> list[str]:
        return [run["state"]["type"] for run in httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()]

    _wait(lambda: "COMPLETED" in states(), 300, "the worker's flow run to complete")
    store = LabelStore.for_workspace(workspace)
    assert store.round_metrics("flowers")[0]["n_queued"] == 10  # a cold start: a random batch of k (default 10)
    store.close()


def test_prefect_yaml_describes_the_same_deployment():
    import inspect

    import yaml

    from flows.schedule import scheduled_round
    from flows.settings import load_settings

    root = Path(__file__).resolve().parents[2]
    (deployment,) = yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]
    module, name = deployment["entrypoint"].split(":")
    assert (root / module).is_file() and name == scheduled_round.__name__
    parameters = deployment["parameters"]
    inspect.signature(scheduled_round.fn).bind(**parameters)  # every parameter is one of the flow's
    settings = load_settings(root / parameters["params"], parameters["overrides"])
    assert settings.campaign_name == parameters["campaign"] == "my-campaign"
    assert deployment["concurrency_limit"] == 1


def test_serve_needs_one_schedule_and_a_server(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    both = runner.invoke(
        app, ["serve", "--dataset", "iris", "--workspace", str(tmp_path), "--interval", "5", "--cron", "* * * * *"]
    )
    assert both.exit_code == 2 and "give one schedule: --interval SECONDS or --cron EXPRESSION" in both.stderr
    # Without a server: a process of its own, since in this one the session's server is in Prefect's settings
    # context, which an environment variable cannot unset (served in-process, the command would never return).
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    alone = subprocess.run(
        [*CLI, "serve", "--dataset", "iris", "--workspace", str(tmp_path), "--interval", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert alone.returncode == 2 and "a schedule needs a Prefect server" in alone.stderr
