"""Fault injection for tests: ``BELIEFLOOP_KILL_AT=<step>`` makes the process SIGKILL itself at that named step
(of every round, of every feature-store rewrite), so a test crashes it at exactly that point (not wherever a timer
lands) and re-runs it."""

from __future__ import annotations

import os
import signal

ROUND_STEPS = ("after_training", "scoring", "before_logging", "after_logging")
"""A round's steps: after the candidates are fitted and saved; inside a pool-scoring task; between enqueueing the
batch and MLflow logging; between MLflow logging and finishing the round in the label store."""
KILL_STEPS = (*ROUND_STEPS, "feature_store_swap")
"""Besides a round's: a feature-store rewrite's (an ingest's append), between moving the old store aside and
renaming the new one into place."""


def kill_point(step: str) -> None:
    """SIGKILL this process when ``BELIEFLOOP_KILL_AT`` names ``step`` (one of ``KILL_STEPS``)."""
    if os.environ.get("BELIEFLOOP_KILL_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)
