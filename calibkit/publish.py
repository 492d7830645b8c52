"""One transaction per run: a run's output files are published as one set, or not at all.

A run stages every output in ``<dir>/.calibkit/stage-<run id>/`` (beside each target, so a
rename publishes it), then commits:

1. a manifest naming the run id and every file's sha256 is staged beside the files;
2. a journal listing every (staged file -> target) move is written atomically: the commit
   point. Before it, an interrupted run leaves the previous set untouched;
3. the files are renamed over their targets, the manifest last; the journal is removed.

A run killed after the commit point (SIGKILL, power loss) is rolled forward by the next
calibkit process that touches the directory, so every reader sees either the complete old
set or the complete new set. Readers check files against the manifest and refuse a mixed
set. An advisory lock (``.calibkit/lock``) makes a second concurrent run fail at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

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
        return CalibkitError(f"no space left on the device writing {what}; nothing was published (the previous outputs are unchanged): free space or choose another -o")
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
        raise CalibkitError(f"cannot create output directory {path}: {exc.strerror}; choose a writable path with -o") from exc
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
        raise CalibkitError(f"{directory} is being published by another calibkit run ({lock.holder()}); try again when it has finished")
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


# --------------------------------------------------------------------------- transaction
class Transaction:
    """Stage a run's outputs and publish them as one set (see module docstring).

    ``with Transaction(out_dir, "calibrate") as tx: tx.write_text("scales.json", ...); tx.commit()``.
    Leaving the block without ``commit()`` (an error, Ctrl-C) publishes nothing.
    """

    def __init__(self, directory: str | os.PathLike, name: str, command: str | None = None) -> None:
        self.directory = Path(directory) if str(directory) else Path(".")
        self.name = name.replace("/", "_")
        self.command = command or name
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.staged: dict[Path, Path] = {}  # target -> staged file
        self.kept: list[Path] = []
        self.stages: dict[Path, Path] = {}  # target dir -> its staging dir
        self.lock = _Lock(self.directory)
        self.other_locks: list[_Lock] = []
        self.created_dir = False
        self.committed = False

    # -- lifecycle
    def __enter__(self) -> Transaction:
        self.created_dir = not self.directory.exists()
        ensure_dir(self.directory)
        if not self.lock.acquire(0.0, purpose=f"calibkit {self.command}"):
            raise CalibkitError(
                f"output directory {self.directory} is in use by another calibkit run ({self.lock.holder()}); "
                "wait for it to finish or choose another -o"
            )
        try:
            for j in _journals(self.directory):
                _roll_forward(j)
            _clean_stale(self.directory)
        except OSError as exc:
            self.lock.release()
            raise _oserror(exc, self.directory) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self.committed:
                for d in self.stages.values():
                    shutil.rmtree(d, ignore_errors=True)
                if self.created_dir:
                    shutil.rmtree(self.directory / META, ignore_errors=True)
                    with contextlib.suppress(OSError):
                        self.directory.rmdir()  # only if the failed run left it empty
        finally:
            for lock in [self.lock, *self.other_locks]:
                lock.release()

    # -- staging
    def _target(self, target: str | os.PathLike) -> Path:
        t = Path(target)
        return t if t.is_absolute() or t.parent != Path(".") else self.directory / t

    def path(self, target: str | os.PathLike) -> Path:
        """Where to write ``target``'s new content (a name in the run's directory, or a path)."""
        t = self._target(target)
        if t.is_dir():
            raise CalibkitError(f"output {t} is a directory; remove it or choose another output path")
        parent = t.parent
        if parent not in self.stages:
            ensure_dir(parent)
            home = parent.parent if parent.name == META else parent
            if home.resolve() != self.directory.resolve() and not any(lk.path.parent.parent == home for lk in self.other_locks):
                lock = _Lock(home)
                if not lock.acquire(0.0, purpose=f"calibkit {self.command}"):
                    raise CalibkitError(f"{home} is in use by another calibkit run ({lock.holder()}); wait for it to finish or write elsewhere")
                self.other_locks.append(lock)
            meta = parent if parent.name == META else parent / META
            try:
                self.stages[parent] = Path(tempfile.mkdtemp(prefix=f"stage-{self.run_id}-", dir=ensure_dir(meta)))
            except OSError as exc:
                raise _oserror(exc, parent) from None
        staged = self.stages[parent] / t.name
        self.staged[t] = staged
        return staged

    @contextlib.contextmanager
    def open(self, target: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
        staged = self.path(target)
        try:
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with os.fdopen(fd, mode) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise _oserror(exc, self._target(target)) from None
        _fault(f"staged:{Path(target).name}")

    def write_bytes(self, target: str | os.PathLike, data: bytes) -> Path:
        with self.open(target) as fh:
            fh.write(data)
        return self._target(target)

    def write_text(self, target: str | os.PathLike, text: str) -> Path:
        return self.write_bytes(target, text.encode("utf-8"))

    def write_with(self, target: str | os.PathLike, writer: Callable[[IO], None]) -> Path:
        with self.open(target) as fh:
            writer(fh)
        return self._target(target)

    def adopt(self, target: str | os.PathLike, src: str | os.PathLike) -> Path:
        """Publish the finished file ``src`` (same filesystem) as ``target``; it is moved."""
        staged = self.path(target)
        try:
            os.replace(src, staged)
            os.chmod(staged, FILE_MODE)
        except OSError as exc:
            raise _oserror(exc, self._target(target)) from None
        return self._target(target)

    def keep(self, target: str | os.PathLike) -> Path:
        """An existing, unchanged file that belongs to this run's set (e.g. reused histograms)."""
        t = self._target(target)
        self.kept.append(t)
        return t

    # -- publishing
    def _relative(self, target: Path) -> str:
        return os.path.relpath(target, self.directory)

    def commit(self) -> dict[str, Path]:
        files = {self._relative(t): sha256_file(s) for t, s in self.staged.items()}
        files.update({self._relative(t): sha256_file(t) for t in self.kept if t.is_file()})
        manifest = {"format": "calibkit-manifest", "version": 1, "run_id": self.run_id, "command": self.command, "files": dict(sorted(files.items()))}
        meta = self.directory / META
        staged_manifest = self.path(meta / f"{self.name}.manifest.json")
        moves = [(str(s), str(t)) for t, s in self.staged.items() if t != meta / f"{self.name}.manifest.json"]
        moves.append((str(staged_manifest), str(meta / f"{self.name}.manifest.json")))
        journal = meta / f"{self.name}.journal.json"
        main_thread = threading.current_thread() is threading.main_thread()
        blocked = {signal.SIGINT, signal.SIGTERM}
        if main_thread:
            signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            try:
                staged_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
                os.chmod(staged_manifest, FILE_MODE)
                tmp = journal.with_name(journal.name + ".tmp")
                with open(tmp, "w") as fh:
                    json.dump({"run_id": self.run_id, "moves": moves}, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                _fault("before-commit")
                os.replace(tmp, journal)
                _fsync_dir(meta)
            except OSError as exc:
                raise _oserror(exc, self.directory) from None
            _fault("committed")
            for k, (staged, target) in enumerate(moves):
                os.replace(staged, target)
                _fault(f"moved:{k}")
            for d in {Path(t).parent for _, t in moves}:
                _fsync_dir(d)
            journal.unlink()
            self.committed = True
            PUBLISHED.append(self.directory)
            for d in self.stages.values():
                shutil.rmtree(d, ignore_errors=True)
        finally:
            if main_thread:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
        return {name: self.directory / name for name in files}
