"""The campaign's round lock: a second process is refused while a round runs, and a holder's death frees it."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from data.round_lock import RoundInProgress, round_lock, round_running_elsewhere
from data.store import LabelStore

TRY_LOCK = textwrap.dedent(
    """
    import sys, time
    from data.round_lock import RoundInProgress, round_lock
    from data.store import LabelStore

    store = LabelStore(sys.argv[1])
    try:
        with round_lock(store, sys.argv[2]):
            print("held", flush=True)
            if sys.argv[3] == "hold":
                time.sleep(600)
    except RoundInProgress as busy:
        print(busy, flush=True)
    """
)


def _try_lock(url: str, campaign: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", TRY_LOCK, url, campaign, "release"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    return request.getfixturevalue("postgres_database")()


def test_a_second_process_is_refused_while_the_lock_is_held(store_url):
    store = LabelStore(store_url)
    with round_lock(store, "digits"):
        refused = _try_lock(store_url, "digits")
        assert "a round of campaign 'digits' is running in another process" in refused
        assert f"pid {os.getpid()}" in refused  # the holder is named
        assert _try_lock(store_url, "iris") == "held"  # another campaign's rounds are not held up
        with pytest.raises(RoundInProgress), round_lock(store, "digits"):  # in this process too
            pass
    assert _try_lock(store_url, "digits") == "held"  # released at the end of the block
    assert round_running_elsewhere(store, "digits") is None
    store.close()


def test_a_killed_holder_leaves_no_lock_behind(store_url):
    holder = subprocess.Popen(
        [sys.executable, "-c", TRY_LOCK, store_url, "digits", "hold"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        store = LabelStore(store_url)
        assert f"pid {holder.pid}" in round_running_elsewhere(store, "digits")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert round_running_elsewhere(store, "digits") is None  # a crashed round can be re-run at once
    store.close()
