"""Live processes by /proc (Linux): the children of a process, the members of a session."""

from __future__ import annotations

from pathlib import Path


def _live(field: int, value: int) -> list[int]:
    """Live (not zombie) processes whose /proc stat field ``field`` (after the name; 1 = ppid,
    3 = session id) equals ``value``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[field]) == value and fields[0] != "Z":
                out.append(int(d.name))
    return out


def children(pid: int) -> list[int]:
    return _live(1, pid)


def in_session(sid: int) -> list[int]:
    return _live(3, sid)
