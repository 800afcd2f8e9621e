"""Fault injection for tests: ``BELIEFLOOP_KILL_AT=<step>`` makes the process SIGKILL itself at that named step
of every round, so a test crashes a round at exactly that point (not wherever a timer lands) and re-runs it."""

from __future__ import annotations

import os
import signal

KILL_STEPS = ("after_training", "scoring", "before_logging", "after_logging")
"""After the candidates are fitted and saved; inside a pool-scoring task; between enqueueing the batch and MLflow
logging; between MLflow logging and finishing the round in the label store."""


def kill_point(step: str) -> None:
    """SIGKILL this process when ``BELIEFLOOP_KILL_AT`` names ``step`` (one of ``KILL_STEPS``)."""
    if os.environ.get("BELIEFLOOP_KILL_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)
