"""Prefect's temporary server, less the 2 s stalls when a run starts, and stopping with the process it serves.

Every task run with tags asks the server for tag-concurrency slots (``POST …/concurrency_limits/increment-with-lease``).
On SQLite that endpoint reads, then writes, in one deferred transaction; when the server commits another write in
between — the task run's own record, written from its events at that moment — SQLite refuses the upgrade at once
("database is locked", ``SQLITE_BUSY``/``SQLITE_BUSY_SNAPSHOT``), the server answers 503, and Prefect's client
tries again 2 s later (±20%). Measured on MNIST rounds: one or two such stalls in most rounds. Creating a flow run
(``POST …/flow_runs/``) and setting a run's state meet the same lock: a digits round lost 1.9–2.1 s to a flow-run
creation answered 503 in both runs of ``benchmarks/round_overhead.py`` and in 1 of 3 digits-only reruns (seen in the
client's request log). Here the server retries those
requests itself after milliseconds: a refused transaction changed nothing, so a retry is what the client would have
done, without the wait. A server set by ``PREFECT_API_URL`` is the user's and left as it is.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

RETRIED_PATHS = (
    "/concurrency_limits/increment-with-lease",
    "/concurrency_limits/increment",
    "/flow_runs/",
    "/set_state",
)
"""The POST requests retried on 503: tag-concurrency acquisitions (every task run with tags makes one), flow-run
creation and run state changes (every flow run makes them)."""

RETRY_DELAYS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)
"""Seconds before each retry (0.64 s in all); after the last, the 503 goes to the client, which waits 2 s."""


class RetryLockedRequests:
    """ASGI middleware: a request of :data:`RETRIED_PATHS` answered 503 is run again after
    :data:`RETRY_DELAYS`; other requests pass through untouched.

    The server answers 503 only for errors a client may retry (a database lock): the refused transaction was
    rolled back, so running the request again is safe."""

    def __init__(self, app: ASGIApp, delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.app = app
        self.delays = delays

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(RETRIED_PATHS):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        for delay in (*self.delays, None):
            messages: list[Message] = []
            error = None
            try:
                await self.app(dict(scope), _replay(body, receive), _collect(messages))  # routing edits its scope
            except Exception as raised:
                # Starlette re-raises a handled error after sending its response (the 503 among them), for the
                # server's log: what counts is what was sent, and the error is raised again when it is answered.
                if not messages:
                    raise
                error = raised
            if delay is None or messages[0].get("status") != 503:
                break
            await asyncio.sleep(delay)
        for message in messages:
            await send(message)
        if error is not None:
            raise error


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):  # whole, or the client left
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The request's body once, then the connection's own messages (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _collect(messages: list[Message]) -> Send:
    async def collect(message: Message) -> None:
        messages.append(message)

    return collect


PARENT_VARIABLE = "BELIEFLOOP_SERVER_PARENT"
"""The environment variable through which :class:`TemporaryServer` tells its server process the pid of the process
it serves (see :func:`exit_with_parent`)."""


def create_app() -> ASGIApp:
    """Prefect's server application (as ``prefect server start`` and the temporary server build it), wrapped in
    :class:`RetryLockedRequests`; uvicorn's ``--factory``. Started by :class:`TemporaryServer`, it stops when the
    process it serves is gone."""
    from prefect.server.api.server import create_app as prefect_app

    if PARENT_VARIABLE in os.environ:
        exit_with_parent(int(os.environ[PARENT_VARIABLE]))
    return RetryLockedRequests(prefect_app())


def exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """Send this process SIGTERM (uvicorn's graceful shutdown) once ``parent`` is no longer its parent process.

    Prefect stops its temporary server at the parent's normal exit (``atexit``) only: a ``beliefloop`` process
    ended by SIGTERM (``kill``, ``timeout``, a scheduler stopping a job) or SIGKILL (the OOM killer) left the server
    running, an orphan holding its port and ~240 MB, one more per killed run. Polled every ``interval`` seconds by a
    daemon thread (``os.getppid`` changes when the parent dies, on Linux and macOS alike)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class TemporaryServer:
    """Prefect's temporary server for this process: uvicorn serving :func:`create_app` on a free local port in a
    subprocess, which is told this process's pid so that it stops when this process is killed, and is stopped at
    this process's normal exit. Flows reach it through ``PREFECT_API_URL`` (:attr:`api_url`).

    Prefect's own ``SubprocessASGIServer`` does the same, but it lives in ``prefect.server.api.server``, whose import
    (the whole server application, needed only in the subprocess) added 2.7 s to every command that starts a
    server, ahead of the subprocess's start (measured after the round's own imports)."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.process: subprocess.Popen[Any] | None = None
        self.answered = False
        """Whether the running server process has answered ``/health``."""
        atexit.register(self.stop)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self, timeout: float) -> None:
        """Start the server (unless it runs) and wait until it answers ``/health``: ``RuntimeError`` when it has
        not within ``timeout`` seconds. A server process that exits first (its port taken meanwhile) is started
        again on another port, up to 3 times."""
        import httpx

        if self.process is not None and self.process.poll() is None:
            return
        deadline = time.monotonic() + timeout
        for _ in range(3):
            self.port = _free_port()
            self.process, self.answered = self._run_uvicorn_command(), False
            with httpx.Client(timeout=5) as client:
                while time.monotonic() < deadline and self.process.poll() is None:
                    with contextlib.suppress(httpx.TransportError):
                        if client.get(f"{self.api_url}/health").status_code == 200:
                            self.answered = True
                            return
                    time.sleep(0.1)
            if self.process.poll() is None:  # still starting: out of time
                break
        exited = self.process.poll()
        self.stop()
        what = "did not answer" if exited is None else f"exited with code {exited}"
        raise RuntimeError(f"Prefect's temporary server {what} within {timeout} s")

    def stop(self) -> None:
        """Stop the server process (SIGTERM, uvicorn's graceful shutdown; SIGKILL after 5 s).

        A server that has not answered yet (a command that failed on its input while the server started) is sent
        SIGTERM and not waited for: it finishes starting before it shuts down, 4 s here, which the command's exit
        waited out after its one-line error. It has served nothing, and stops on its own.
        """
        if self.process is None:
            return
        if not self.answered:
            self.process.terminate()
            self.process = None
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        from prefect.settings import get_current_settings

        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
            PARENT_VARIABLE: str(os.getpid()),
        }
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).resolve().parents[1])]
        command += ["--factory", f"{__name__}:create_app", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--log-level", "error", "--lifespan", "on"]
        return subprocess.Popen(command, env=env)


def _free_port() -> int:
    """A local port no one listens on now (the system's choice)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
