"""Atomic file output: write to a temp file in the target directory, then rename.

A crash or Ctrl-C while writing leaves the previous file (if any) untouched, never a
half-written cache, histogram store or report.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from calibkit.errors import CalibkitError


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents); raise a CalibkitError if that is impossible."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CalibkitError(f"cannot create output directory {path}: {exc.strerror}; choose a writable path with -o") from exc
    if not os.access(path, os.W_OK):
        raise CalibkitError(f"output directory {path} is not writable; choose another with -o")
    return path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside ``path``; on clean exit fsync and rename it over ``path``."""
    target = Path(path)
    ensure_dir(target.parent if str(target.parent) else Path("."))
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise CalibkitError(f"cannot write {target}: {exc.strerror}; choose a writable output path") from exc
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_with(path: str | os.PathLike, writer: Callable[[IO], None]) -> Path:
    """Atomically write ``path`` by calling ``writer(binary_file)``."""
    with atomic_open(path, "wb") as fh:
        writer(fh)
    return Path(path)
