"""Append-only journal of finished evaluations, so an interrupted search resumes.

One JSON object per line: a header ``{"calibkit": "evaljournal", "version": 1, "fingerprint":
...}`` and then ``{"key": ..., "value": ...}`` for each finished evaluation, written and
fsync'd as it completes. A run killed mid-write leaves at most a truncated last line, which is
dropped. A journal written for another fingerprint (other model, data or settings) is not
reused: it is started afresh and :attr:`Journal.note` says so. Values must be JSON
(numbers, strings, lists, dicts); :meth:`put` returns the value as it reads back, so fresh
and resumed results are the same objects."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from calibkit.errors import CalibkitError
from calibkit.executor.base import Executor

KIND = "evaljournal"
VERSION = 1


class Journal:
    def __init__(self, path: str | os.PathLike, fingerprint: str, on_wait: Callable[[], None] | None = None) -> None:
        """``on_wait``: called once if another run holds the journal, then this one waits for it
        (and reuses what it finished); without it, a held journal is an error."""
        self.path = Path(path)
        self.fingerprint = str(fingerprint)
        self.note: str | None = None
        self._values: dict[str, Any] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CalibkitError(
                f"{self.path}: cannot open the evaluation journal ({exc.strerror}); "
                "make that folder writable or point CALIBKIT_CACHE at a writable one"
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is None:
                os.close(self._fd)
                raise CalibkitError(
                    f"{self.path}: another calibkit run is using this evaluation journal; wait for it or use another CALIBKIT_CACHE"
                ) from None
            on_wait()
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(self._fd)
                raise
        self._load()

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        with open(self._fd, "rb", closefd=False) as f:
            data = f.read()
        lines = data.split(b"\n")
        # everything before the last newline is complete; a last line without one is a torn write
        good_end = len(data) - len(lines[-1])
        complete = lines[:-1]
        header = _parse(complete[0]) if complete else None
        if not (isinstance(header, dict) and header.get("calibkit") == KIND and header.get("version") == VERSION):
            if data.strip():
                self.note = f"{self.path}: not a calibkit {KIND} v{VERSION} (or its header is torn); starting afresh"
            self._restart()
            return
        if header.get("fingerprint") != self.fingerprint:
            self.note = f"{self.path}: recorded for another model, data or settings; starting afresh"
            self._restart()
            return
        for number, line in enumerate(complete[1:], start=2):
            entry = _parse(line)
            if not (isinstance(entry, dict) and isinstance(entry.get("key"), str) and "value" in entry):
                raise CalibkitError(
                    f"{self.path}:{number}: damaged evaluation journal line; delete the file to start afresh"
                )
            self._values.setdefault(entry["key"], entry["value"])
        if good_end != len(data):
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)

    def _restart(self) -> None:
        os.ftruncate(self._fd, 0)
        self._values.clear()
        self._append({"calibkit": KIND, "version": VERSION, "fingerprint": self.fingerprint})

    # ------------------------------------------------------------------ writing
    def _append(self, obj: dict) -> None:
        line = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
        os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._values)

    def put(self, key: str, value: Any) -> Any:
        """Record ``value`` for ``key`` (durably, before returning) and return it as JSON reads it back."""
        if not isinstance(key, str):
            raise TypeError(f"journal keys are strings, not {type(key).__name__}")
        text = json.dumps(value)  # TypeError for non-JSON values: a bug in the caller
        value = json.loads(text)
        if key not in self._values:
            self._append({"key": key, "value": value})
            self._values[key] = value
        return self._values[key]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None


def run_missing(
    journal: Journal,
    ex: Executor,
    task: Callable[[Any], Any],
    items: Sequence[Any],
    keys: Sequence[str],
    on_result: Callable[[int, Any, bool], None] | None = None,
) -> list[Any]:
    """Results for ``items`` in item order: journalled ones are reused, the rest run on ``ex``
    (inside its with-block) and are journalled as each completes.

    ``keys[i]`` names item i's evaluation (unique); ``on_result(index, value, reused)`` is called
    for every item, reused ones first."""
    items, keys = list(items), list(keys)
    if len(keys) != len(items) or len(set(keys)) != len(keys):
        raise ValueError("run_missing needs one unique key per item")
    out: list[Any] = [None] * len(items)
    todo: list[int] = []
    for i, key in enumerate(keys):
        if key in journal:
            out[i] = journal.get(key)
            if on_result:
                on_result(i, out[i], True)
        else:
            todo.append(i)
    for j, value in _map(ex, task, [items[i] for i in todo]):
        i = todo[j]
        out[i] = journal.put(keys[i], value)
        if on_result:
            on_result(i, out[i], False)
    return out


def _map(ex: Executor, task: Callable[[Any], Any], items: list[Any]) -> Iterator[tuple[int, Any]]:
    return ex.map(task, items) if items else iter(())
