"""Files kept between runs in the user's cache folder (``platformdirs``: ``$XDG_CACHE_HOME/beliefloop``, else
``~/.cache/beliefloop`` on Linux): what every new workspace would otherwise make again the slow way. Nothing there
is needed — a missing, unwritable or damaged cache only costs the time it saves."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import platformdirs


def cached_file(name: str, make: Callable[[Path], None]) -> Path | None:
    """The cache's file ``name``, first made by ``make(path)`` when missing; ``None`` when it cannot be made (a
    read-only home, a full disk, ``make`` raising ``OSError``). ``make`` writes a file of its own that becomes
    ``name`` only once complete, so a reader never sees half a file, and processes making it at once do not
    collide."""
    folder = Path(platformdirs.user_cache_dir("beliefloop"))
    path = folder / name
    if path.is_file():
        return path
    partial = partial_path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        make(partial)
        os.replace(partial, path)
    except OSError:
        return None
    finally:
        partial.unlink(missing_ok=True)
    return path


def partial_path(path: Path) -> Path:
    """A hidden name beside ``path`` that only this process and thread use: where a file is written before it
    becomes ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
