"""Faults of a campaign's environment that a command reports in one line, saying that the labels are safe.

Not bugs and not bad input: another process's round of the campaign running now, the label store locked by
another connection, the MLflow tracking store out of reach, a full disk, a file of the workspace missing or
unreadable. Each has had its bounded retries by then (the label store's ``store.attempts``, MLflow's
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, the logging task's Prefect retries); every label-store write is one
transaction and a round is resumable, so nothing recorded is lost.
"""

from __future__ import annotations

import errno
import re
import sys

LABELS_SAFE = (
    "the labels are safe: every answer recorded so far is in the label store (each write is one transaction); "
    "fix this and run the command again (an interrupted round resumes where it stopped)"
)

_MLFLOW_REQUEST = re.compile(r"API request to (\S+) failed with (?:timeout )?exception")


def fault_message(error: BaseException) -> str | None:
    """One line for an environmental fault (ending with :data:`LABELS_SAFE`), ``None`` for anything else.

    A round that failed on a transient error at every try (``flows.retry.RoundFailed``) is told by its cause when
    that is a fault described here, else by its own line (which says where the labels are safe)."""
    from data.round_lock import RoundInProgress
    from flows.retry import RoundFailed

    if isinstance(error, RoundInProgress):  # nothing failed: another process's round is running
        return str(error)
    if isinstance(error, RoundFailed):
        cause = _describe(error.__cause__) if error.__cause__ is not None else None
        return str(error) if cause is None else f"{cause}; the round was tried {error.attempts} times; {LABELS_SAFE}"
    what = _describe(error)
    return None if what is None else f"{what}; {LABELS_SAFE}"


def _describe(error: BaseException) -> str | None:
    from data.feature_store import FeatureStoreMissing
    from data.store import StoreBusyError

    # Only a loaded flows.models raises its CheckpointError; importing it (torch) cost a refused `label` 1.5 s.
    models = sys.modules.get("flows.models")
    if isinstance(error, (StoreBusyError, FeatureStoreMissing)) or (
        models is not None and isinstance(error, models.CheckpointError)
    ):
        return str(error)
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = f" writing {error.filename}" if error.filename else ""
        return f"no space left on device{where} (after the step's retries)"
    if type(error).__module__.startswith("sqlalchemy") and type(error).__name__ == "OperationalError":
        return f"the label store failed: {str(getattr(error, 'orig', error)).splitlines()[0]}"
    if type(error).__name__ in ("MlflowException", "RestException") and (match := _MLFLOW_REQUEST.search(str(error))):
        from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES

        retries = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()
        return (
            f"the MLflow tracking store is unreachable: {match.group(1)} did not answer after {retries} retries "
            "(MLFLOW_HTTP_REQUEST_MAX_RETRIES)"
        )
    return None
