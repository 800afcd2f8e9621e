"""Hermetic test environment: Prefect, MLflow and DVC state under a temporary folder, no telemetry."""

import functools
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
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
# Registering each round's model costs a CLI process ~5 s and a round ~2 s here; the tests of the registry (the
# two-round campaign, the killed round, the team setup) turn it back on, every other test runs without it.
os.environ["BELIEFLOOP_TRACKING__REGISTER_MODEL"] = "false"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

LONGEST_FILES = (
    "tests/flows/test_cli_live.py",
    "tests/flows/test_campaign.py",
    "tests/flows/test_cli_live_truth.py",
    "tests/test_benchmarks.py",
    "tests/flows/test_serve.py",
    "tests/flows/test_team_setup.py",
    "tests/pipeline/test_dvc.py",
)
"""The test files of most seconds (80–240 s each of the 1,780 s the two workers spend, ``pytest --durations=0``),
longest first."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run :data:`LONGEST_FILES` first, the rest in their usual order: ``make test``'s two workers take a file at a
    time in collection order, and a long file collected near the end (``tests/test_benchmarks.py``, 2–3 min) kept one
    worker busy after the other had finished. With this order the suite's wall time is within 30 s of half the
    workers' sum."""
    rank = {path: i for i, path in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """One Prefect server for the whole session (the CLI's temporary server, ``flows.prefect_server``), shared by
    in-process flows and every CLI subprocess (through ``PREFECT_API_URL``): otherwise each ``beliefloop``
    subprocess starts a temporary server of its own (7-20 s)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.prefect_server import TemporaryServer

    server = TemporaryServer()
    server.start(timeout=300)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        del os.environ["PREFECT_API_URL"]
        server.stop()


POSTGRES_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
"""Debian's PostgreSQL server binaries (``apt-get install -y postgresql``: version 15 on bookworm); ``.ci/run``
installs them."""


def _as_postgres(command: list[str]) -> list[str]:
    """``command`` as the ``postgres`` user when running as root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return command
    return ["su", "postgres", "-c", shlex.join(command)]


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on 127.0.0.1 at a free port (trust authentication, user ``postgres``), for
    the session; yields its server URL (no database). Skips, saying what to install, when the binaries are missing."""
    if not POSTGRES_BINARIES:
        pytest.skip("needs PostgreSQL server binaries in /usr/lib/postgresql/*/bin (apt-get install -y postgresql)")
    binaries = POSTGRES_BINARIES[-1].parent
    root = Path(tempfile.mkdtemp(prefix="beliefloop-pg-"))  # under /tmp: the postgres user can reach it
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=120, check=True)
    run(_as_postgres([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]))
    options = f"-k {data} -h 127.0.0.1 -p {port}"
    pg_ctl = str(binaries / "pg_ctl")
    run(_as_postgres([pg_ctl, "-D", str(data), "-o", options, "-l", str(data / "log"), "-w", "start"]))
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_database(postgres_server):
    """``new()`` → the URL of a new, empty database on the session's PostgreSQL cluster (plain ``postgresql://``,
    as users write it)."""
    import sqlalchemy as sa

    admin = sa.create_engine(f"{postgres_server}/postgres".replace("postgresql://", "postgresql+psycopg://"))

    def new() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        return f"{postgres_server}/{name}"

    yield new
    admin.dispose()


@pytest.fixture()
def fresh_python():
    """``run(code)``: the standard output of ``code`` run in a new Python interpreter (which must exit 0): what a
    process imports, seen from a clean ``sys.modules``."""

    def run(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    return run


@pytest.fixture()
def database_file_after_exit(tmp_path):
    """``run(code, database)``: run ``code`` in a new Python process that ends with ``gc.freeze()`` (as the CLI
    does, so its database connections are never closed), then return a copy of the SQLite file ``database`` alone,
    without its write-ahead log: what DVC caches."""

    def run(code: str, database: Path) -> Path:
        subprocess.run([sys.executable, "-c", code + "import gc; gc.freeze()\n"], check=True, timeout=300)
        copy = tmp_path / "copy" / database.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(database, copy)
        return copy

    return run
