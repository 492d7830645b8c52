"""One transaction per run: a run's output files are published as one set, or not at all.

A run stages every output in ``<dir>/.calibkit/stage-<run id>/`` (beside each target, so a
rename publishes it), then commits:

1. a manifest naming the run id and every file's sha256 is staged beside the files;
2. a journal listing every (staged file -> target) move, as names relative to the folder, is
   written atomically: the commit point. Before it, an interrupted run leaves the previous set
   untouched. (A file published into another folder gets that folder's own journal, written
   just before the commit point: recovery only ever moves a folder's own staged files.)
3. the files are renamed over their targets, the manifest last; the journal is removed.

SIGINT, SIGTERM and SIGHUP are deferred for the whole process from step 1 to the end of
step 3 (:func:`signals_deferred`): one that arrives before the commit point cancels the
publish, one after it is re-delivered once the set is complete, so the interrupt message is true.

A run killed after the commit point (SIGKILL, power loss) is rolled forward by the next
calibkit process that touches the directory, so every reader sees either the complete old
set or the complete new set. Readers check files against the manifest and refuse a mixed
set. An advisory lock (``.calibkit/lock``) makes a second concurrent run fail at once.
"""

from __future__ import annotations

import contextlib
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
from calibkit.outputs.sets import (  # noqa: F401  (re-exported: readers import them from here)
    FILE_MODE,
    JOURNAL_FORMAT,
    JOURNAL_VERSION,
    META,
    PUBLISHED,
    _clean_stale,
    _fault,
    _fsync_dir,
    _journals,
    _Lock,
    _manifests,
    _oserror,
    _roll_forward,
    check_not_input,
    ensure_dir,
    read_manifest,
    recover,
    sha256_file,
    verify,
)


def check_output_file(t: Path) -> None:
    """An output path must be a regular file or not exist yet: publishing replaces it whole, so a
    symbolic link would become a file (the link gone, its target untouched) and a device node,
    FIFO or socket (``/dev/null``, ``/dev/stdout``) a regular file in its place."""
    import stat

    try:
        st = os.lstat(t)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _oserror(exc, t) from None
    if stat.S_ISLNK(st.st_mode):
        raise CalibkitError(
            f"output {t} is a symbolic link (to {os.readlink(t)}); calibkit replaces an output whole, which would replace "
            "the link: give the path of the file itself, or remove the link"
        )
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        raise CalibkitError(
            f"output {t} is not a regular file (a device, FIFO or socket); calibkit writes its outputs as files it "
            "publishes whole: choose a file path"
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
        self.past_commit = False  # this folder's journal (the commit point) is written
        self.journals: list[Path] = []
        self.after_commit: list[Callable[[], object]] = []  # run once the set is published (e.g. drop replaced files)

    # -- lifecycle
    def __enter__(self) -> Transaction:
        self.created_dir = not self.directory.exists()
        ensure_dir(self.directory)
        if not self.lock.acquire(0.0, purpose=f"calibkit {self.command}"):
            raise CalibkitError(
                f"output directory {self.directory} is in use by another calibkit run ({self.lock.holder()}); "
                "wait for it to finish or choose another output path"
            )
        try:
            if (self.directory / META).is_symlink():
                recover(self.directory)  # refuses it, naming the link
            for j in _journals(self.directory):
                _roll_forward(j, self.directory)
            _clean_stale(self.directory)
        except OSError as exc:
            self.lock.release()
            raise _oserror(exc, self.directory) from None
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self.committed and self.past_commit:
                # cut off after the commit point (an OSError mid-rename): finish it, never delete
                # what the journal still needs; a folder that cannot be finished now is by the next run
                with contextlib.suppress(OSError, CalibkitError):
                    for j in self.journals:
                        _roll_forward(j)
                    PUBLISHED.append(self.directory)
            elif not self.committed:
                for j in self.journals:  # other folders' journals written before the commit point
                    with contextlib.suppress(OSError):
                        j.unlink()
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
        check_output_file(t)
        if t.is_dir():
            raise CalibkitError(f"output {t} is a directory; remove it or choose another output path")
        if META in t.parent.parts and not (t.parent == self.directory / META and t.name.endswith(".manifest.json")):
            raise CalibkitError(
                f"output {t} is inside a {META} folder, where calibkit keeps its publishing records; choose an output path outside it"
            )
        check_not_input(t, self.command)
        self._check_not_anothers(t)
        if t in self.staged:
            raise CalibkitError(f"output {t} is named twice in this run; give each output its own path")
        parent = t.parent
        if parent not in self.stages:
            ensure_dir(parent)
            home = parent.parent if parent.name == META else parent
            if home.resolve() != self.directory.resolve() and not any(
                lk.path.parent.parent == home for lk in self.other_locks
            ):
                lock = _Lock(home)
                if not lock.acquire(0.0, purpose=f"calibkit {self.command}"):
                    raise CalibkitError(
                        f"{home} is in use by another calibkit run ({lock.holder()}); wait for it to finish or write elsewhere"
                    )
                self.other_locks.append(lock)
            meta = parent if parent.name == META else parent / META
            try:
                self.stages[parent] = Path(tempfile.mkdtemp(prefix=f"stage-{self.run_id}-", dir=ensure_dir(meta)))
            except OSError as exc:
                raise _oserror(exc, parent) from None
        staged = self.stages[parent] / t.name
        self.staged[t] = staged
        return staged

    def refuse_others_members(self, names: list[str]) -> None:
        """Refuse now, before a long run's work, the outputs (names in the run's directory) that
        ``path`` would refuse at the end: members of another command's set, or this run's inputs."""
        for name in names:
            target = self._target(name)
            check_not_input(target, self.command)
            self._check_not_anothers(target)

    def _check_not_anothers(self, t: Path) -> None:
        """Refuse to replace a member of another command's set: that set's manifest would no
        longer verify, so every reader of it would refuse it. Re-running the command that
        published it replaces its set, which is fine."""
        parent = t.parent.parent if t.parent.name == META else t.parent
        own = f"{self.name}.manifest.json"
        # sets published here, and in sub-folders whose sets hold files up here (compare's
        # per-method sets list the report beside them as ../r.html)
        homes = [
            parent,
            *(m.parent.parent for m in sorted(parent.glob(f"*/{META}")) + sorted(parent.glob(f"*/*/{META}"))),
        ]
        for home in dict.fromkeys(homes):
            rel = os.path.relpath(t.absolute(), home.absolute())
            for mf in _manifests(home):
                if mf.name == own and home == parent:
                    continue
                doc = read_manifest(mf)
                if doc is None or rel not in doc["files"]:
                    continue
                self._refuse_member(t, home, doc)

    def _refuse_member(self, t: Path, parent: Path, doc: dict) -> None:
        command = doc.get("command") if isinstance(doc.get("command"), str) else "calibrate"
        if command == self.command:  # the same command's other set (validate --report a.html, then b.html)
            return
        raise CalibkitError(
            f"output {t} belongs to the set `calibkit {command}` published in {parent} (with "
            f"{', '.join(sorted(map(str, doc['files']))[:4])}{', ...' if len(doc['files']) > 4 else ''}); "
            f"replacing it would leave that set mixed and unreadable: write to another path or folder, "
            f"or re-run `calibkit {command}`"
        )

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

    def _journal_plan(self, moves: list[tuple[Path, Path]]) -> dict[Path, list[list[str]]]:
        """Moves grouped by the folder they publish into (each folder's journal holds only its
        own moves, as names relative to it: recovery refuses anything else)."""
        plans: dict[Path, list[list[str]]] = {}
        for staged, target in moves:
            home = target.parent.parent if target.parent.name == META else target.parent
            rel_target = target.name if target.parent == home else f"{META}/{target.name}"
            plans.setdefault(home, []).append([f"{staged.parent.name}/{staged.name}", rel_target])
        return plans

    def _write_journal(self, home: Path, moves: list[list[str]], final: bool) -> Path:
        journal = home / META / f"{self.name}.journal.json"
        tmp = journal.with_name(journal.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump({"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "run_id": self.run_id, "moves": moves}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if final:
            _fault("before-commit", self.directory)
        os.replace(tmp, journal)
        _fsync_dir(journal.parent)
        return journal

    def _inputs_here(self, outputs: set[str]) -> dict[str, str]:
        """{name: sha256} of the files this run read (sets.INPUTS) that lie in this folder and
        are not replaced by this set: a later run that replaces one makes this set stale, and
        readers say so (``verify``)."""
        from calibkit.outputs.sets import INPUTS

        root = self.directory.resolve()
        out = {}
        for p in INPUTS:
            if root not in p.parents or META in p.relative_to(root).parts:
                continue
            rel = str(p.relative_to(root))
            if rel in outputs or not p.is_file():
                continue
            with contextlib.suppress(OSError):
                out[rel] = sha256_file(p)
        return dict(sorted(out.items()))

    def commit(self) -> dict[str, Path]:
        files = {self._relative(t): sha256_file(s) for t, s in self.staged.items()}
        files.update({self._relative(t): sha256_file(t) for t in self.kept if t.is_file()})
        manifest = {
            "format": "calibkit-manifest",
            "version": 1,
            "run_id": self.run_id,
            "command": self.command,
            "files": dict(sorted(files.items())),
        }
        inputs = self._inputs_here(set(files))
        if inputs:
            manifest["inputs"] = inputs
        meta = self.directory / META
        manifest_target = meta / f"{self.name}.manifest.json"
        self.after_commit.append(_remove_left_over(self.directory, manifest_target, set(files)))
        staged_manifest = self.path(manifest_target)
        moves = [(s, t) for t, s in self.staged.items() if t != manifest_target]
        moves.append((staged_manifest, manifest_target))
        plans = self._journal_plan(moves)
        main = next(h for h in plans if h.resolve() == self.directory.resolve())
        with signals_deferred() as caught:
            try:
                staged_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
                os.chmod(staged_manifest, FILE_MODE)
                # other folders' journals first; this folder's is the commit point
                for home in [h for h in plans if h is not main] + [main]:
                    if home is main and caught:
                        break  # interrupted before the commit point: publish nothing
                    self.journals.append(self._write_journal(home, plans[home], final=home is main))
                    self.past_commit = home is main
            except OSError as exc:
                raise _oserror(exc, self.directory) from None
            if self.past_commit:
                _fault("committed", self.directory)
                for k, (staged, target) in enumerate(moves):
                    os.replace(staged, target)
                    _fault(f"moved:{k}", self.directory)
                for d in {t.parent for _, t in moves}:
                    _fsync_dir(d)
                for j in self.journals:
                    j.unlink()
                self.committed = True
                PUBLISHED.append(self.directory)
                for d in self.stages.values():
                    shutil.rmtree(d, ignore_errors=True)
                for fn in self.after_commit:
                    with contextlib.suppress(OSError):
                        fn()
        return {name: self.directory / name for name in files}


REMOVED: list[Path] = []  # files of replaced sets this process removed (the CLI names them at the end)
EDITED: list[Path] = []  # files the new set replaced that had been edited since their set was published


def _remove_left_over(directory: Path, manifest: Path, keep: set[str]):
    """After the commit: the files of this folder's previous set of the same command that the
    new set does not hold (a stale sufficiency.json, another model's cache) are removed, each only
    if it is still the file that set published (same sha256) and lies inside the folder, so a
    file a user edited or put there since is never touched. Read before the commit replaces the
    manifest; run after it."""
    try:
        old = json.loads(manifest.read_text()).get("files", {}) if manifest.is_file() else {}
    except (OSError, ValueError, AttributeError):
        old = {}
    root = directory.resolve()
    gone, edited = [], []
    for name, digest in old.items() if isinstance(old, dict) else ():
        if not isinstance(name, str) or not isinstance(digest, str):
            continue
        if name in keep:
            q = directory / name
            if q.is_file() and not q.is_symlink() and sha256_file(q) != digest:
                edited.append(q)  # replaced as the run asked, but said: the edit is gone
            continue
        p = (directory / name).resolve()
        if root not in p.parents or p.is_symlink() or not p.is_file():
            continue
        gone.append((p, digest))

    def remove() -> None:
        EDITED.extend(edited)
        for p, digest in gone:
            if sha256_file(p) == digest:
                p.unlink()
                REMOVED.append(p)
                parent = p.parent
                while parent != root and root in parent.parents and _only_a_stale_lock(parent):
                    shutil.rmtree(parent)
                    parent = parent.parent

    return remove


def _only_a_stale_lock(folder: Path) -> bool:
    """``folder`` holds nothing but (at most) its own .calibkit/lock: an emptied sub-folder of
    a replaced set (e.g. shards/)."""
    entries = list(folder.iterdir())
    if not entries:
        return True
    if [e.name for e in entries] != [META] or not (folder / META).is_dir() or (folder / META).is_symlink():
        return False
    return all(e.name == "lock" and e.is_file() for e in (folder / META).iterdir())


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT, SIGTERM and SIGHUP for the whole process while the block runs; re-deliver
    the first one afterwards. CPython runs Python-level signal handlers only in the main thread,
    whichever thread (ORT's, the progress bar's) the kernel handed the signal to, so swapping
    the handlers defers them for every thread. Yields the list of signals caught so far."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    held = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.getsignal(s) for s in held}
    for s in held:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            else:
                os.kill(os.getpid(), caught[0])
