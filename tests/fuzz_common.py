"""Shared pieces of the fuzz suites: settings, outcome counting, the one-line-error check."""

from __future__ import annotations

from hypothesis import HealthCheck, event, settings

from calibkit.errors import CalibkitError


def fuzz(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


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
