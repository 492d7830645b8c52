"""Shared pieces of the fuzz suites: settings, outcome counting, the one-line-error check."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

from calibkit.errors import CalibkitError


def fuzz(n: int):
    return settings(
        max_examples=n, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )


def note(what: str) -> None:
    """Count outcomes for --hypothesis-show-statistics (a no-op outside a property)."""
    try:
        event(what)
    except Exception:
        pass


def outcome(fn, *args):
    """``fn(*args)``, or None when it raised a CalibkitError (whose message must be one line)."""
    try:
        result = fn(*args)
        note("valid result")
        return result
    except CalibkitError as exc:
        note("CalibkitError")
        msg = str(exc)
        assert msg and "\n" not in msg and "\r" not in msg, f"CalibkitError message is not one line: {msg!r}"
        return None


TMP = Path(tempfile.mkdtemp(prefix="calibkit-fuzz-"))


def put(name: str, data: bytes | str) -> Path:
    p = TMP / name
    p.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return p


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
odd_numbers = st.sampled_from(
    [
        0,
        -1,
        0.0,
        -0.0,
        1e-45,
        1e-39,
        1e39,
        1e308,
        10**40,
        -(10**40),
        10**400,
        math.nan,
        math.inf,
        -math.inf,
        True,
        False,
        "1.0",
        None,
        [],
        {},
    ]
)
