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


def _fault(point: str, directory: Path | None = None) -> None:
    """Test hooks: ``CALIBKIT_TEST_KILL_AT=<point>`` kills the process right there (SIGKILL);
    ``CALIBKIT_TEST_PAUSE_AT=<point>`` touches ``$CALIBKIT_TEST_PAUSE_FILE`` and sleeps
    ``$CALIBKIT_TEST_PAUSE_S`` seconds there (default 3), so a test can aim a signal at it; with
    ``$CALIBKIT_TEST_PAUSE_DIR`` only in the publish into that folder."""
    if os.environ.get("CALIBKIT_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
    only = os.environ.get("CALIBKIT_TEST_PAUSE_DIR")
    if os.environ.get("CALIBKIT_TEST_PAUSE_AT") == point and (
        not only or (directory is not None and str(directory.resolve()) == only)
    ):
        Path(os.environ["CALIBKIT_TEST_PAUSE_FILE"]).touch()
        end = time.monotonic() + float(os.environ.get("CALIBKIT_TEST_PAUSE_S", "3"))
        while time.monotonic() < end:
            time.sleep(0.02)


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
            f"no space left on the device writing {what}; nothing was published (the previous outputs are unchanged): free space or choose another output path"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CalibkitError(f"cannot write {what}: {exc.strerror}; choose a writable output path")
    return CalibkitError(f"cannot write {what}: {exc.strerror or exc}; nothing was published")


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents); raise a CalibkitError if that is impossible."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        dangling = next((q for q in (path, *path.parents) if q.is_symlink() and not q.exists()), None)
        if dangling is not None:
            raise CalibkitError(
                f"output path {dangling} is a symbolic link to {os.readlink(dangling)}, which does not exist; "
                "create its target or choose another output path"
            ) from None
        raise CalibkitError(f"output path {path} exists and is not a directory; choose another output path") from None
    except OSError as exc:
        raise CalibkitError(
            f"cannot create output directory {path}: {exc.strerror}; choose a writable output path"
        ) from exc
    if not os.access(path, os.W_OK):
        raise CalibkitError(f"output directory {path} is not writable; choose another output path")
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
JOURNAL_FORMAT = "calibkit-journal"
JOURNAL_VERSION = 2


def _journals(directory: Path) -> list[Path]:
    meta = directory / META
    return sorted(meta.glob("*.journal.json")) if meta.is_dir() and not meta.is_symlink() else []


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def _refuse(journal: Path, directory: Path, why: str) -> CalibkitError:
    return CalibkitError(
        f"{journal}: not a publish journal calibkit can finish ({why}); recovery only moves files from "
        f"{directory / META}/stage-*/ to names in {directory}, so it did nothing: delete {journal} "
        f"(and check who wrote it) to use {directory} again"
    )


def _journal_moves(journal: Path, directory: Path) -> list[tuple[Path, Path]] | None:
    """The checked moves of ``journal`` (data from the disk): each staged file must be a plain
    file directly in a ``stage-*`` folder of ``directory``'s own META folder, and its target
    the same name in ``directory`` (or a ``*.manifest.json`` in META). ``None`` for an
    unreadable journal (torn: it never became the commit point); anything else is refused."""
    try:
        plan = json.loads(journal.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    meta = directory / META
    if meta.is_symlink():
        raise _refuse(journal, directory, f"{meta} is a symbolic link")
    if not isinstance(plan, dict) or not isinstance(plan.get("moves"), list):
        raise _refuse(journal, directory, "no list of moves")
    legacy = plan.get("format") != JOURNAL_FORMAT
    moves: list[tuple[Path, Path]] = []
    for entry in plan["moves"]:
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
            raise _refuse(journal, directory, f"a move is not a pair of names: {str(entry)[:80]!r}")
        stage_rel, target_rel = entry
        if legacy:  # version 1 held absolute paths
            if not (os.path.isabs(stage_rel) and os.path.isabs(target_rel)):
                raise _refuse(journal, directory, "relative paths in a version-1 journal")
            stage_rel = os.path.relpath(stage_rel, meta.absolute())
            target_rel = os.path.relpath(target_rel, directory.absolute())
        sp, tp = stage_rel.split("/"), target_rel.split("/")
        if not (len(sp) == 2 and sp[0].startswith("stage-") and all(_plain_name(x) for x in sp)):
            raise _refuse(journal, directory, f"{stage_rel!r} is not in {meta}/stage-*/")
        manifest = len(tp) == 2 and tp[0] == META and tp[1].endswith(".manifest.json")
        if not ((len(tp) == 1 or manifest) and all(_plain_name(x) for x in tp) and tp[-1] == sp[1]):
            raise _refuse(journal, directory, f"target {target_rel!r} is not the staged name in {directory}")
        stage_dir = meta / sp[0]
        if stage_dir.is_symlink():
            raise _refuse(journal, directory, f"{stage_dir} is a symbolic link")
        staged = stage_dir / sp[1]
        if staged.is_symlink() or (staged.exists() and not staged.is_file()):
            raise _refuse(journal, directory, f"{staged} is not a plain file")
        moves.append((staged, directory / target_rel))
    return moves


def _roll_forward(journal: Path, directory: Path | None = None) -> None:
    directory = journal.parent.parent if directory is None else directory
    moves = _journal_moves(journal, directory)
    if moves is None:
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
    if (directory / META).is_symlink():
        raise CalibkitError(
            f"{directory / META} is a symbolic link; calibkit keeps a folder's publishing records in a real "
            f"folder and touches nothing through a link: remove the link (or copy the files elsewhere)"
        )
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
            _roll_forward(j, directory)
        _clean_stale(directory)
    finally:
        lock.release()


def _clean_stale(directory: Path) -> None:
    meta = directory / META
    if meta.is_dir() and not meta.is_symlink():
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


def settle(path: str | os.PathLike) -> None:
    """Finish a publish cut off after its commit point in the folders ``path`` may belong to,
    before a reader reads a byte of it: the journal says the new set counts, so a reader that
    read first got the old file and then moved the new set in under its own output (attack 5)."""
    p = Path(path).absolute()
    homes = [p, p.parent, p.parent.parent] if p.is_dir() else [p.parent, p.parent.parent]
    for directory in homes:
        if (directory / META).is_dir():
            recover(directory)


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
        if doc is None or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc["files"].items()):
            raise CalibkitError(
                f"{mf} is not a readable calibkit manifest, so it cannot vouch for the files beside it "
                f"(damaged or edited by hand?); re-run the command that wrote {directory}, or delete {mf} "
                "to use the files as they are"
            )
        if rel not in doc["files"]:
            continue
        command = doc.get("command") if isinstance(doc.get("command"), str) else "calibrate"
        check_inputs_current(doc, directory, p, mf, command)
        for name, digest in sorted(doc["files"].items()):
            f = directory / name
            if not f.is_file():
                raise CalibkitError(
                    f"{name} in {directory}, published by run {doc.get('run_id')} together with {p.name}, is missing: "
                    f"the set is incomplete; re-run `calibkit {command}` into {directory}, or delete {mf} to use "
                    "the files as they are"
                )
            if sha256_file(f) != digest:
                raise CalibkitError(
                    f"{name} in {directory} changed after run {doc.get('run_id')} published it with {p.name} (sha256 differs from {mf.name}): "
                    f"the set is mixed (edited or overwritten by hand?); re-run `calibkit {command}` into {directory}, "
                    f"or delete {mf} to use the files as they are"
                )


def check_inputs_current(doc: dict, directory: Path, p: Path, mf: Path, command: str) -> None:
    """A set records the files of its own folder it was made from (``inputs``): one replaced
    since (a later calibrate into the folder) leaves this set describing the old one."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, dict):
        return
    for name, digest in sorted(inputs.items()):
        if not isinstance(name, str) or not isinstance(digest, str):
            continue
        f = directory / name
        if not f.is_file() or sha256_file(f) != digest:
            raise CalibkitError(
                f"{p.name} in {directory} was made by `calibkit {command}` (run {doc.get('run_id')}) from {name} as it "
                f"was then, and {name} has since been {'removed' if not f.is_file() else 'replaced'} (a later run into "
                f"{directory}?): it describes the old one; re-run `calibkit {command}`, or delete {mf} to use the files as they are"
            )


# --------------------------------------------------------------------------- inputs of the run
INPUTS: dict[Path, tuple[str, str | None]] = {}  # resolved path -> (what named it, command of its set or None)


POSITIONAL = {"model", "a", "b", "path"}  # arguments named without an option (MODEL, diff A B, inspect PATH)


def note_inputs(named: dict[str, object]) -> None:
    """Record the files this run reads (``{option: path}``), so no output replaces one. A file
    that a calibkit manifest lists brings the rest of its set along (validate reads the
    histograms beside --scales): those are refused only to other commands than the set's own."""
    for key, value in named.items():
        label = key.upper() if key in POSITIONAL else "--" + key.replace("_", "-")
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, (str, os.PathLike)) or not str(v):
                continue
            s = str(v)
            s = s.split(".py:", 1)[0] + ".py" if ".py:" in s else s
            with contextlib.suppress(OSError, ValueError):
                p = Path(s)
                settle(p)  # a set cut off after its commit point is finished before anything reads it
                if not p.is_file():
                    continue
                INPUTS[p.resolve()] = (label, None)
                home = p.resolve().parent
                for mf in _manifests(home):
                    doc = read_manifest(mf)
                    if doc and os.path.relpath(p.resolve(), home) in doc["files"]:
                        command = doc.get("command") if isinstance(doc.get("command"), str) else "calibrate"
                        check_inputs_current(doc, home, p, mf, command)
                        for name in doc["files"]:
                            q = (home / str(name)).resolve()
                            INPUTS.setdefault(q, (f"{label}'s set", str(doc.get("command"))))


def check_not_input(target: Path, command: str) -> None:
    t = target.resolve()
    hit = INPUTS.get(t)
    if hit is None or (hit[1] is not None and hit[1] == command):
        return
    raise CalibkitError(
        f"output {target} is also an input of this run ({hit[0]}); writing it would replace that input: "
        "choose another output path"
    )
