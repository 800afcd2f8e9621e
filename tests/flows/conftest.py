"""A live campaign with a pending queue, made once per session by the real CLI and copied for each test."""

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

SCRIPT_ID = "<script>alert(1)</script>"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
"""As root Chromium needs ``--no-sandbox``; without the networking flags it keeps trying to reach hosts this machine
cannot reach."""


def _run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "flows", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def _queued_campaign(tmp_path_factory):
    """8×8 digit images: 30 labeled, 8 unlabeled (one with the id ``<script>alert(1)</script>``), 20 test.

    One real round (``beliefloop round``) trains on the 30 labels and queues all 8 pool items by BALD, each
    with the model's predicted class and its score.
    """
    root = tmp_path_factory.mktemp("queued")
    digits = load_digits()
    images, y = digits.images.astype(np.uint8), digits.target.astype(np.int64)
    ids = np.array([f"img-{i:03d}" for i in range(37)] + [SCRIPT_ID] + [f"img-{i:03d}" for i in range(38, 58)])
    np.savez(
        root / "digits8.npz",
        x_train=images[:38],
        y_train=np.concatenate([y[:30], np.full(8, -1)]),
        ids_train=ids[:38],
        x_test=images[38:58],
        y_test=y[38:58],
        ids_test=ids[38:58],
    )
    params = root / "params.yaml"
    params.write_text(
        "campaign:\n  min_labels: 10\nmodel:\n  steps: 30\nacquisition:\n  name: bald\n  samples: 4\n"
        "selection:\n  candidates: []\n"
    )
    workspace = root / "w"
    _run_cli(
        "round",
        "--dataset",
        str(root / "digits8.npz"),
        "--k",
        "8",
        "--workspace",
        str(workspace),
        "--params",
        str(params),
    )
    return workspace


@pytest.fixture()
def queued_workspace(_queued_campaign, tmp_path):
    """A copy of the session's campaign (``digits8``) that a test may change."""
    return shutil.copytree(_queued_campaign, tmp_path / "w")


@pytest.fixture()
def beliefloop():
    """Run the CLI in a subprocess: ``beliefloop(*args, check=True)`` → the completed process."""
    return _run_cli


@pytest.fixture()
def script_id() -> str:
    """The id of the campaign's pool item that is a piece of HTML."""
    return SCRIPT_ID


@pytest.fixture()
def serve_annotate():
    """Start ``beliefloop annotate`` on a free port; returns (URL it printed, port) once it answers. Stopped after."""
    processes = []

    def start(workspace, *args: str) -> tuple[str, int]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, "-m", "flows", "annotate", "--workspace", str(workspace), "--port", str(port)]
        process = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        processes.append(process)
        line = process.stdout.readline()
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                return re.search(r"http://\S+", line).group(0), port
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, line + (process.stdout.read() or "")
                time.sleep(0.2)

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


def pytest_collection_modifyitems(config, items):
    """Without Debian's Chromium, tests that use a browser are skipped before any of their fixtures run."""
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)")
    for item in items:
        if "chromium_launch" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture()
def chromium_launch() -> dict:
    """Keyword arguments of Playwright's ``chromium.launch`` for Debian's Chromium (tests that ask for it are
    skipped without it)."""
    pytest.importorskip("playwright.sync_api", reason="needs the playwright package (dev extra)")
    return {"executable_path": str(CHROMIUM), "headless": True, "args": CHROMIUM_ARGS}
