"""Exclusion lists: node names kept in float, one per line (``fallback`` writes them)."""

from __future__ import annotations

import re
from pathlib import Path

import onnx

from calibkit.errors import CalibkitError


def regex(nodes: list[str]) -> str | None:
    """An anchored pattern matching exactly these node names (for ``exclude_nodes``)."""
    return "^(" + "|".join(re.escape(n) for n in nodes) + ")$" if nodes else None


def read_list(path: str | Path, model: onnx.ModelProto) -> str | None:
    """The names in ``path`` as an exclusion pattern; every name must be a node of ``model``
    (as export-qdq names them), or a one-line error names the first unknown one."""
    from calibkit.sensitivity.switch import named_float

    p = Path(path)
    if not p.is_file():
        raise CalibkitError(f"--exclude-list {p} not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibkitError(f"--exclude-list {p} is not a readable text file ({exc.__class__.__name__})") from None
    names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise CalibkitError(f"--exclude-list {p} lists no node names")
    known = {n.name for n in named_float(model).graph.node}
    unknown = [n for n in names if n not in known]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise CalibkitError(
            f"--exclude-list {p}: the model has no node named {unknown[0]!r}{more}; was the list written for another model?"
        )
    return regex(names)
