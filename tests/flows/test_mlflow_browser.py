"""The MLflow UI of a small campaign in a real browser (Debian's Chromium through Playwright), as `beliefloop ui`
serves it: from the list of experiments to a round run, whose artifacts are listed."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

CLI = [sys.executable, "-m", "flows"]


@pytest.fixture()
def mlflow_ui(tmp_path):
    """A 2-round simulated digits campaign (one small candidate, few steps), then `beliefloop ui` on a free port;
    yields the campaign's link that the command printed. The UI is stopped with SIGTERM after."""
    workspace = tmp_path / "w"
    env = {
        **os.environ,
        "BELIEFLOOP_MODEL__STEPS": "30",
        "BELIEFLOOP_SELECTION__CANDIDATES": "[]",
        "BELIEFLOOP_TRACKING__REGISTER_MODEL": "true",  # the default a reviewer sees (the UI's view depends on it)
    }
    args = ["--dataset", "digits", "--rounds", "2", "--k", "10", "--samples", "4", "--workspace", str(workspace)]
    result = subprocess.run([*CLI, "simulate", *args], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ui = subprocess.Popen(
        [*CLI, "ui", "--workspace", str(workspace), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert ui.poll() is None, ui.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow UI did not answer within 300 s"
                time.sleep(1)
        campaign = "digits-powerbald-seed0"
        announced = [ui.stdout.readline() for _ in range(2)]  # the UI's address, then one line per campaign
        assert announced[1].startswith(f"  campaign {campaign}: http://127.0.0.1:{port}/#/experiments/"), announced
        yield announced[1].split(": ", 1)[1].strip()
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(60)


def test_a_reviewer_reaches_a_round_run_and_its_artifacts(chromium_launch, mlflow_ui, tmp_path):
    from playwright import sync_api

    campaign_link = mlflow_ui
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(**chromium_launch)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(120_000)  # the UI's first render takes tens of seconds on a loaded machine
        # `beliefloop ui` prints each campaign's link: its runs, in MLflow's machine-learning view (MLflow 3.17
        # opens an experiment on its GenAI overview otherwise).
        page.goto(campaign_link)
        # The runs table: the round runs are nested under the campaign's run: expand it, open round 2.
        page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
        assert "/runs" in page.url, page.url
        page.get_by_role("link", name="round-002").click()
        page.get_by_text("Metrics (").first.wait_for()
        assert page.get_by_text("test_accuracy").first.is_visible()
        page.get_by_role("tab", name="Artifacts").click()
        for artifact in ("queued_batch.csv", "bayes_factors.csv", "learning_curve.png", "reliability.png"):
            page.get_by_text(artifact, exact=True).first.wait_for()
        page.get_by_text("learning_curve.png", exact=True).first.click()  # its preview opens beside the list
        page.wait_for_timeout(1000)
        page.screenshot(path=str(tmp_path / "mlflow_round_artifacts.png"), full_page=True)
        browser.close()
    assert (tmp_path / "mlflow_round_artifacts.png").stat().st_size > 10_000
