"""Writing outputs: every file goes through a :class:`~calibkit.outputs.publish.Transaction`.

Pass ``tx`` to add a file to a run's output set (published with the rest, or not at all);
without it the file is published alone, atomically, in the same way (staged, renamed,
recorded in a manifest, created with the umask's mode).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from calibkit.outputs.publish import Transaction, check_output_file, ensure_dir

__all__ = ["ensure_dir", "write_bytes", "write_text", "write_with"]


def write_with(path: str | os.PathLike, writer: Callable[[IO], None], tx: Transaction | None = None) -> Path:
    """Write ``path`` by calling ``writer(binary_file)``: into ``tx``, or published alone."""
    if tx is not None:
        return tx.write_with(path, writer)
    target = Path(path)
    check_output_file(target)  # before a lock folder is made beside it
    with Transaction(target.parent, target.name, command=f"writing {target.name}") as own:
        own.write_with(target.name, writer)
        own.commit()
    return target


def write_bytes(path: str | os.PathLike, data: bytes, tx: Transaction | None = None) -> Path:
    return write_with(path, lambda fh: fh.write(data), tx)


def write_text(path: str | os.PathLike, text: str, tx: Transaction | None = None) -> Path:
    return write_bytes(path, text.encode("utf-8"), tx)
