"""Scratch folders in the system's temp folder that a killed run does not leave behind for good.

A run ended by SIGKILL or the OOM killer cannot remove its scratch (quantize's can hold
gigabytes of cut tensors). Every scratch folder here is ``calibkit-<kind>-<random>`` and holds
an ``.owner`` file that its process keeps locked (``flock``) while the folder is in use; the lock
goes with the process however it ends, whatever its pid namespace. ``sweep()``, run when a
command starts, removes the folders whose lock nobody holds. A folder without its ``.owner``
file yet (being made this instant) is left alone unless it is over a day old.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

OWNER = ".owner"
NAME = re.compile(r"^calibkit-[a-z0-9]+-[A-Za-z0-9_]+$")
ORPHAN_WITHOUT_OWNER_S = 24 * 3600

_held: dict[str, int] = {}  # folder -> the descriptor whose lock marks it in use


def make(kind: str) -> Path:
    """A new scratch folder, locked as this process's until ``release``."""
    folder = Path(tempfile.mkdtemp(prefix=f"calibkit-{kind}-"))
    fd = os.open(folder / OWNER, os.O_CREAT | os.O_RDWR, 0o600)
    _lock(fd, block=True)
    _held[str(folder)] = fd
    return folder


def release(folder: str | os.PathLike) -> None:
    """Remove a folder ``make`` gave, and drop its lock."""
    shutil.rmtree(folder, ignore_errors=True)
    fd = _held.pop(str(folder), None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def scratch(kind: str) -> Iterator[str]:
    """Like ``tempfile.TemporaryDirectory(prefix=f"calibkit-{kind}-")``, sweepable when orphaned."""
    folder = make(kind)
    try:
        yield str(folder)
    finally:
        release(folder)


def sweep(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove orphaned scratch folders (their owner's lock is free) under ``root``; return them."""
    root = Path(root or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        if not NAME.match(entry.name) or not entry.is_dir(follow_symlinks=False) or entry.path in _held:
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(entry.path, OWNER), os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime > ORPHAN_WITHOUT_OWNER_S:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(Path(entry.path))
            continue
        except OSError:
            continue
        try:
            if _lock(fd, block=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
        finally:
            os.close(fd)
    return removed


def _lock(fd: int, block: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): folders are never swept, never wrongly
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True
