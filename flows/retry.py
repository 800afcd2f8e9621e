"""Transient failures of a round (the MLflow store unreachable, a database locked or disconnected) are retried with
backoff; after the last try one line says what failed and that the labels are safe.

Retrying the whole round is safe: a round is resumable (the label store keeps it unfinished, its queue batch is
written once, its MLflow run is found again by tag), and every answer was stored in its own transaction before.
Only stdlib imports at the top: the CLI imports :class:`RoundFailed` for every command.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

ATTEMPTS = 3
BACKOFF_SECONDS = 2.0
"""The first retry waits this long, each later one twice as long as the one before."""


class RoundFailed(RuntimeError):
    """A round failed on a transient error at every one of its ``attempts``; the message is one line."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


def transient_cause(error: BaseException) -> BaseException | None:
    """The transient failure in ``error``'s chain (``__cause__`` / ``__context__``), if any: a connection refused,
    reset or timed out (MLflow wraps these in an ``MlflowException``), or a database's operational error (locked,
    busy, gone away)."""
    import requests
    import sqlalchemy.exc

    kinds = (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout, sqlalchemy.exc.OperationalError)
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def one_line(error: BaseException, limit: int = 240) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def with_retries(
    run: Callable[[], T],
    *,
    what: str,
    labels_at: str,
    notify: Callable[[str], object],
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF_SECONDS,
) -> T:
    """``run()``, tried again after ``backoff``, ``2 × backoff``, … seconds while it fails on a transient error
    (``notify`` hears of each retry). Other errors pass through at once. After ``attempts`` failures,
    :class:`RoundFailed` says, in one line, ``what`` failed, why, and that the labels are safe at ``labels_at``."""
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except Exception as error:
            cause = transient_cause(error)
            if cause is None:
                raise
            if attempt == attempts:
                raise RoundFailed(  # the outermost error names the store (MLflow's, its URL), the cause only a host
                    f"{what} failed {attempts} times on a transient error: {one_line(error)} — the labels are safe "
                    f"in {labels_at} (every answer is stored in its own transaction, and the round resumes where it "
                    "stopped): run it again once the stores answer",
                    attempts,
                ) from error
            delay = backoff * 2 ** (attempt - 1)
            notify(f"{what}: {one_line(cause, 160)}; trying again in {delay:g} s ({attempt} of {attempts} tries)")
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
