"""Hermetic test environment: Prefect, MLflow and DVC state under a temporary folder, no telemetry."""

import os
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="beliefloop-tests-"))
os.environ.update(
    {
        "PREFECT_HOME": str(_HOME / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{_HOME / 'stray-mlflow.db'}",
        "GIT_PYTHON_REFRESH": "quiet",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
)
for key in [k for k in os.environ if k.startswith("BELIEFLOOP_")]:
    del os.environ[key]

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """One Prefect server for the whole session, shared by in-process flows and every CLI subprocess (through
    ``PREFECT_API_URL``): otherwise each ``beliefloop`` subprocess starts a temporary server of its own (7-20 s)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start(timeout=300)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        del os.environ["PREFECT_API_URL"]
        server.stop()
