"""Fixtures shared by the CLI hostile suites."""

from __future__ import annotations

import pytest


@pytest.fixture
def calibrated(cli, tmp_path, conv_model, conv_data):
    """(the conv model, the folder of its default calibration: tmp_path/cal)."""
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "cal")
    return conv_model, tmp_path / "cal"
