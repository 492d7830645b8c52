"""The pieces of a published output set that readers use too: the advisory lock, the
manifest check that refuses a mixed set, and the roll-forward of a publish cut off after its
commit point (see :mod:`calibkit.outputs.publish`)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

from calibkit.errors import CalibkitError

META = ".calibkit"
PUBLISHED: list[Path] = []  # directories this process published a set into (for the interrupt message)
LOCK_WAIT = 60.0  # seconds a reader waits for a run that is committing right now


def _fault(point: str) -> None:
    """Test hook: ``CALIBKIT_TEST_KILL_AT=<point>`` kills the process right there (SIGKILL)."""
    if os.environ.get("CALIBKIT_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _oserror(exc: OSError, what: Path) -> CalibkitError:
    if exc.errno == errno.ENOSPC:
        return CalibkitError(
            f"no space left on the device writing {what}; nothing was published (the previous outputs are unchanged): free space or choose another -o"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CalibkitError(f"cannot write {what}: {exc.strerror}; choose a writable output path")
    return CalibkitError(f"cannot write {what}: {exc.strerror or exc}; nothing was published")


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents); raise a CalibkitError if that is impossible."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CalibkitError(f"output path {path} exists and is not a directory; choose another -o") from None
    except OSError as exc:
        raise CalibkitError(
            f"cannot create output directory {path}: {exc.strerror}; choose a writable path with -o"
        ) from exc
    if not os.access(path, os.W_OK):
        raise CalibkitError(f"output directory {path} is not writable; choose another with -o")
    return path


# --------------------------------------------------------------------------- locking
class _Lock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / META / "lock"
        self.fd: int | None = None

    def acquire(self, wait: float = 0.0, purpose: str = "") -> bool:
        ensure_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise _oserror(exc, self.path) from None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)
        self.fd = fd
        if purpose:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}, {purpose}, since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------- recovery
def _journals(directory: Path) -> list[Path]:
    meta = directory / META
    return sorted(meta.glob("*.journal.json")) if meta.is_dir() else []


def _roll_forward(journal: Path) -> None:
    try:
        plan = json.loads(journal.read_text())
        moves = [(Path(a), Path(b)) for a, b in plan["moves"]]
    except (OSError, ValueError, KeyError, TypeError):
        journal.unlink(missing_ok=True)  # unreadable: it was never the commit point
        return
    for staged, target in moves:
        if staged.exists():
            os.replace(staged, target)
    for d in {target.parent for _, target in moves}:
        _fsync_dir(d)
    for d in {staged.parent for staged, _ in moves}:
        shutil.rmtree(d, ignore_errors=True)
    journal.unlink(missing_ok=True)


def recover(directory: Path, wait: float = LOCK_WAIT) -> None:
    """Finish a publish cut off after its commit point, and drop the staging of runs cut off
    before it (any process may do this; a run still going keeps the lock and its staging)."""
    pending = bool(_journals(directory))
    if not pending and not any((directory / META).glob("stage-*")):
        return
    lock = _Lock(directory)
    if not lock.acquire(wait if pending else 0.0):
        if not pending:
            return  # a run is writing: its staging is not stale
        raise CalibkitError(
            f"{directory} is being published by another calibkit run ({lock.holder()}); try again when it has finished"
        )
    try:
        for j in _journals(directory):
            _roll_forward(j)
        _clean_stale(directory)
    finally:
        lock.release()


def _clean_stale(directory: Path) -> None:
    meta = directory / META
    if meta.is_dir():
        for d in meta.glob("stage-*"):
            shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- manifest
def _manifests(directory: Path) -> list[Path]:
    meta = directory / META
    return sorted(meta.glob("*.manifest.json")) if meta.is_dir() else []


def read_manifest(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        return None
    return doc


def verify(path: str | os.PathLike) -> None:
    """Refuse to read ``path`` when the set it was published in is mixed.

    Files no calibkit manifest names (hand-made, or from older versions) pass unchecked.
    """
    p = Path(path).absolute()
    for directory in (p.parent, p.parent.parent):
        if (directory / META).is_dir():
            _verify_in(p, directory)


def _verify_in(p: Path, directory: Path) -> None:
    recover(directory)
    rel = os.path.relpath(p, directory)
    for mf in _manifests(directory):
        doc = read_manifest(mf)
        if doc is None or rel not in doc["files"]:
            continue
        for name, digest in sorted(doc["files"].items()):
            f = directory / name
            if f.is_file() and sha256_file(f) != digest:
                raise CalibkitError(
                    f"{f.name} in {directory} changed after run {doc.get('run_id')} published it with {p.name} (sha256 differs from {mf.name}): "
                    f"the set is mixed (edited or overwritten by hand?); re-run `calibkit {doc.get('command', 'calibrate')}` into {directory}, "
                    f"or delete {mf} to use the files as they are"
                )
