"""Hermetic test environment: Prefect, MLflow and DVC state under a temporary folder, no telemetry."""

import os
import tempfile
from pathlib import Path

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
