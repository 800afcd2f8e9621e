"""`beliefloop ui`: a real MLflow server on the workspace's store, refused on a taken port, stopped by SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from typer.testing import CliRunner

from flows.cli import app


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_served(port: int) -> bool:
    """Whether something accepts connections on the port (a bind test would also fail on TIME_WAIT sockets)."""
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_taken_port_is_refused_with_a_non_zero_exit(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--workspace", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 2
    assert f"cannot serve the MLflow UI on 127.0.0.1:{port}: Address already in use" in result.stderr


def test_sigterm_stops_the_mlflow_server_it_started(tmp_path):
    port = _free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "flows", "ui", "--workspace", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:  # MLflow's server takes seconds to start on a busy machine
            assert ui.poll() is None, ui.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow UI did not answer within 300 s"
                time.sleep(1)
        ui.send_signal(signal.SIGTERM)
        ui.wait(60)
        deadline = time.monotonic() + 30
        while _port_served(port):  # the server's own workers are gone too, not only the CLI process
            assert time.monotonic() < deadline, f"port {port} still served after the CLI stopped"
            time.sleep(0.5)
    finally:
        if ui.poll() is None:
            os.kill(ui.pid, signal.SIGKILL)
