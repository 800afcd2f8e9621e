"""One round at a time per campaign: a lock that the operating system or the database releases when its holder dies.

Two ``beliefloop round`` commands (a schedule and a person, two schedules) would otherwise both train in full and
queue twice. The lock is held for the whole round and is never left behind by a crash, so a crashed round can be
re-run at once:

* SQLite: ``flock`` on a file per campaign beside the database (``.round-locks/<hash>.lock``); the kernel drops it
  when the holding process exits, however it exits. The file names the holder (pid, host, start) for the message.
* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a connection of its own, named after the
  holder (``application_name``); the server drops it when that connection ends. A killed holder's server process
  ends a moment after its client (when it reads the closed socket; CI saw the lock still held just after the kill),
  so a taken lock is tried again for up to ``DEAD_HOLDER_GRACE_S`` before the command is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from data.store import LabelStore, StoreError, sqlite_file

DEAD_HOLDER_GRACE_S = 2.0
"""How long a taken PostgreSQL round lock is retried: the time a dead holder's server session may take to end."""


class RoundInProgress(StoreError):
    """Another process holds the campaign's round lock; the command that got this changed nothing."""


def _holder() -> dict[str, str | int]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat(timespec="seconds")}


def _busy(campaign: str, holder: str) -> RoundInProgress:
    return RoundInProgress(
        f"a round of campaign {campaign!r} is running in another process ({holder}); this command changed "
        "nothing: run it again when that round has finished"
    )


def lock_key(campaign: str) -> int:
    """The campaign's advisory-lock key: a signed 64-bit hash (PostgreSQL's ``bigint``)."""
    digest = hashlib.sha256(f"beliefloop round {campaign}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def round_lock(store: LabelStore, campaign: str) -> Iterator[None]:
    """Hold ``campaign``'s round lock for the block, or raise :class:`RoundInProgress` at once if it is taken."""
    if (path := sqlite_file(store.url)) is not None:
        with _file_lock(path.parent / ".round-locks" / f"{lock_key(campaign) & (2**64 - 1):016x}.lock", campaign):
            yield
    elif store.engine.dialect.name == "postgresql":
        with _advisory_lock(store.engine, campaign):
            yield
    else:  # another database: rounds are not serialised (the store runs on SQLite and PostgreSQL)
        yield


@contextlib.contextmanager
def _file_lock(path: Path, campaign: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            try:
                who = json.loads(file.read())
                holder = f"pid {who['pid']} on {who['host']} since {who['since']}"
            except (ValueError, KeyError):  # the holder is between taking the lock and naming itself
                holder = "starting"
            raise _busy(campaign, holder) from None
        try:
            file.seek(0)
            file.truncate()
            file.write(json.dumps({**_holder(), "campaign": campaign}))
            file.flush()
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(engine: sa.Engine, campaign: str) -> Iterator[None]:
    key = lock_key(campaign)
    who = _holder()
    name = f"beliefloop round pid {who['pid']} on {who['host']} since {who['since']}"[:63]  # NAMEDATALEN - 1
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("SELECT set_config('application_name', :name, false)"), {"name": name})
        deadline = time.monotonic() + DEAD_HOLDER_GRACE_S
        while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar():
            if time.monotonic() >= deadline:
                holder = conn.execute(
                    sa.text(
                        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                        "AND l.classid::bigint = :high AND l.objid::bigint = :low"
                    ),
                    {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF},  # how pg_locks shows a bigint key
                ).scalar()
                raise _busy(campaign, holder or "a PostgreSQL session")
            time.sleep(0.05)
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def round_running_elsewhere(store: LabelStore, campaign: str) -> str | None:
    """Who holds ``campaign``'s round lock (the :class:`RoundInProgress` message), or ``None`` when nobody does."""
    try:
        with round_lock(store, campaign):
            return None
    except RoundInProgress as error:
        return str(error)
