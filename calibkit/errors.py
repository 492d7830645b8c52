"""The one user-facing error type.

Library code raises :class:`CalibkitError` with a message that names the file, tensor or
option at fault and says what to do. The CLI prints it on one line and exits 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CalibkitError(Exception):
    """A user error: bad input, bad option, unusable file. The message is actionable."""


class ThresholdFailed(CalibkitError):
    """Raised by ``validate``/``compare`` when a gate (--min-cosine, ...) is not met.

    The report and results are written first; the CLI exits with ``exit_code`` (3), so build
    pipelines can tell "INT8 is not good enough" from a usage error (1, 2).
    """

    exit_code = 3
