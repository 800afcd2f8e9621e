"""Progress of a round's long steps (candidate training, pool scoring) for the person who started it.

On a terminal each step is a rich progress bar, cleared when the round ends; elsewhere (a pipe, a log file, a
scheduled run) each step is one log line when it ends (``fit h64-d1: 500 of 500 steps in 1.3 s``), in the round's
log, so that one-line error reports and the
round table on standard output stay as they are. The maths packages know nothing of this: they call the
``progress(done, total)`` callbacks that :meth:`RoundProgress.step` hands out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: the work done so far of a step of ``total`` (monotone; ``total`` may grow)."""


class Step:
    """One long step, possibly done in parts at once (pool shards): each part reports its own ``(done, total)``,
    the step shows their sums. Thread-safe: parts run in Prefect's worker threads."""

    def __init__(self, owner: RoundProgress, description: str, total: int, unit: str) -> None:
        self._owner, self.description, self.unit, self._total = owner, description, unit, total
        self._done_by: dict[int, int] = {}
        self._total_by: dict[int, int] = {}
        self._lock = threading.Lock()
        self._started = time.perf_counter()
        self._task = owner._bar.add_task(description, total=total or None) if owner._bar is not None else None

    def part(self, key: int = 0) -> ProgressCallback:
        """The callback of part ``key``."""

        def report(done: int, total: int) -> None:
            with self._lock:
                self._done_by[key], self._total_by[key] = done, total
                counts = self.counts
            if self._owner._bar is not None:
                self._owner._bar.update(self._task, completed=counts[0], total=counts[1])

        return report

    @property
    def counts(self) -> tuple[int, int]:
        """``(done, total)`` over the parts so far."""
        return sum(self._done_by.values()), max(self._total, sum(self._total_by.values()))

    def close(self) -> None:
        """The step has ended: its log line (without a terminal), its bar left full."""
        done, total = self.counts
        if self._owner._bar is None:
            seconds = time.perf_counter() - self._started
            self._owner._logger.info("%s: %d of %d %s in %.1f s", self.description, done, total, self.unit, seconds)


class RoundProgress:
    """The progress display of one round: bars on ``console`` when it is a terminal, else lines on ``logger``."""

    def __init__(self, console: Console, logger: logging.Logger | logging.LoggerAdapter) -> None:
        self._logger = logger
        self._bar = None
        if console.is_terminal:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self._bar = Progress(*columns, console=console, transient=True)

    @contextmanager
    def shown(self) -> Iterator[RoundProgress]:
        """Display the bars while the block runs (nothing to start for log lines)."""
        if self._bar is None:
            yield self
            return
        with self._bar:
            yield self

    @contextmanager
    def step(self, description: str, total: int, unit: str) -> Iterator[Step]:
        """A step of ``total`` ``unit`` (``0`` when not known yet: the parts' totals then count) while the block
        runs; its line is logged when the block ends."""
        step = Step(self, description, total, unit)
        yield step
        step.close()
