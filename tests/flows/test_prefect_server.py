"""The temporary Prefect server (``flows.prefect_server``): a tag-concurrency acquisition, a flow-run creation or a
state change answered 503 (a locked SQLite database) is retried by the server after milliseconds instead of by
Prefect's client after 2 s; and the server stops when the process it serves is killed."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from flows.prefect_server import PARENT_VARIABLE, RetryLockedRequests, TemporaryServer

ACQUIRE = "/api/v2/concurrency_limits/increment-with-lease"
CREATE_FLOW_RUN = "/api/flow_runs/"
SET_STATE = "/api/flow_runs/6f1c2d3e-0000-4000-8000-000000000001/set_state"


class Locked(Exception):
    """Stands for SQLite's "database is locked", which Prefect's exception handler answers 503."""


def _app(locked_times: int, bodies: list) -> Starlette:
    """An app shaped like Prefect's server: routes mounted under ``/api``, and an exception handler answering 503
    (which Starlette re-raises after sending). The endpoint is locked ``locked_times`` times, then answers."""

    async def acquire(request: Request) -> JSONResponse:
        bodies.append(await request.json())
        if len(bodies) <= locked_times:
            raise Locked
        return JSONResponse({"limits": [], "tries": len(bodies)})

    async def locked(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"exception_message": "Service Unavailable"}, status_code=503)

    routes = [
        Route(path.removeprefix("/api"), acquire, methods=["POST"]) for path in (ACQUIRE, CREATE_FLOW_RUN, SET_STATE)
    ]
    api = Starlette(routes=routes, exception_handlers={Exception: locked})
    return Starlette(routes=[Mount("/api", app=api)])


def _post(app, path: str = ACQUIRE) -> httpx.Response:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            return await client.post(path, json={"names": ["tag:round:3"], "slots": 1})

    return asyncio.run(post())


@pytest.mark.parametrize("path", [ACQUIRE, CREATE_FLOW_RUN, SET_STATE])
def test_a_locked_request_is_answered_once_the_lock_is_gone(path):
    bodies: list = []
    response = _post(RetryLockedRequests(_app(locked_times=3, bodies=bodies)), path)
    assert response.status_code == 200, response.text
    assert response.json() == {"limits": [], "tries": 4}
    assert bodies == [{"names": ["tag:round:3"], "slots": 1}] * 4  # the same request each time


def test_without_the_retry_the_client_gets_the_503():
    assert _post(_app(locked_times=1, bodies=[])).status_code == 503


def test_a_lock_that_outlasts_the_retries_reaches_the_client_as_503():
    bodies: list = []
    response = _post(RetryLockedRequests(_app(locked_times=100, bodies=bodies), delays=(0.001, 0.001)))
    assert response.status_code == 503
    assert json.loads(response.text) == {"exception_message": "Service Unavailable"}
    assert len(bodies) == 3


def test_other_requests_are_not_retried():
    bodies: list = []
    app = RetryLockedRequests(_app(locked_times=1, bodies=bodies))
    assert _post(app, "/api/v2/concurrency_limits/decrement-with-lease").status_code == 404
    assert _post(app).status_code == 200
    assert len(bodies) == 2


def test_the_temporary_server_serves_the_retrying_app(prefect_server):
    """The tests' Prefect server is the CLI's temporary server: a child process of this one serves this module's app
    factory on the port of the URL flows use."""
    port = prefect_server.removesuffix("/api").rsplit(":", 1)[1]
    commands = [p.cmdline() for p in psutil.Process().children() if _serves_create_app(p)]
    assert any(command[command.index("--port") + 1] == port for command in commands)
    assert httpx.get(f"{prefect_server}/health", timeout=10).status_code == 200


def test_starting_a_temporary_server_does_not_import_prefects_server_application(fresh_python):
    """The client process imports no ``prefect.server`` (2.7 s here): only the server's subprocess serves it."""
    code = "import sys, flows.prefect_server; print(sorted(m for m in sys.modules if m.startswith('prefect.server')))"
    assert fresh_python(code) == "[]\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_temporary_server_stops_when_a_killed_campaign_leaves_it(tmp_path, sig):
    """A ``beliefloop simulate`` stopped by a signal (no ``atexit``: a scheduler's SIGTERM, the OOM killer's
    SIGKILL) while its temporary server runs: the server process exits by itself instead of living on."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL")  # not the session's server: the campaign starts a temporary one
    command = [sys.executable, "-m", "flows", "simulate", "--dataset", "digits", "--rounds", "50"]
    campaign = subprocess.Popen(
        [*command, "--workspace", str(tmp_path / "w")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    servers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while not servers and time.monotonic() < deadline and campaign.poll() is None:
            servers = [p for p in psutil.Process(campaign.pid).children() if _serves_create_app(p)]
            time.sleep(0.2)
        assert servers, "the campaign started no temporary server"
        campaign.send_signal(sig)
        campaign.wait(timeout=30)
        _, alive = psutil.wait_procs(servers, timeout=30)
        assert not alive, "the temporary server outlived the campaign it served"
    finally:
        campaign.kill()
        for server in servers:
            if server.is_running():
                server.kill()


def test_a_server_still_starting_is_not_waited_for_and_stops_by_itself(tmp_path, monkeypatch):
    """A command that fails on its input while its temporary server starts: ``stop`` (at exit) sends SIGTERM and
    returns without reaping the process (waiting for its start to finish cost such a command 4 s after its error),
    and the process ends by itself."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    server = TemporaryServer()
    server.port = 0  # not started by start(): no /health answered
    server.process = process = server._run_uvicorn_command()
    server.stop()
    assert server.process is None and process.returncode is None  # sent SIGTERM, not waited for
    assert process.wait(timeout=60) is not None  # it stopped by itself


def test_a_command_failing_on_its_dataset_leaves_no_server_behind(tmp_path):
    """``beliefloop round`` on a file it refuses, with a temporary server starting beside it: the one-line error,
    exit 2, and no server process of that command is left a minute later."""
    bad = tmp_path / "bad.csv"
    bad.write_text("f,label\n1.5,a\n?,b\n2.5,a\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL")
    command = [sys.executable, "-m", "flows", "round", "--dataset", str(bad), "--label-column", "label"]
    run = subprocess.Popen([*command, "--workspace", str(tmp_path / "w")], env=env, stderr=subprocess.PIPE, text=True)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 2 and "feature column 'f' holds numbers, but row 1" in stderr
    left = [p for p in psutil.process_iter() if _serves_create_app(p) and _served_pid(p) == run.pid]
    _, alive = psutil.wait_procs(left, timeout=60)
    assert not alive, "the temporary server outlived the command"


def _served_pid(process: psutil.Process) -> int | None:
    try:
        return int(process.environ().get(PARENT_VARIABLE, -1))
    except psutil.Error:
        return None


def _serves_create_app(process: psutil.Process) -> bool:
    """Whether ``process`` runs this module's app (a short-lived child may be gone by the time it is asked)."""
    try:
        return "flows.prefect_server:create_app" in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False
