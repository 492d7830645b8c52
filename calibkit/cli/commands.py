"""The ``calibkit`` command group and its commands, in one explicit list."""

from __future__ import annotations

import click

from calibkit import __version__
from calibkit.cli import (
    build_cmd,
    calibrate_cmd,
    diff_cmd,
    drift_cmd,
    placement_cmd,
    quantize_cmd,
    sensitivity_cmd,
    validate_cmds,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="calibkit")
def cli() -> None:
    """INT8 calibration workbench for TensorRT and ONNX Runtime.

    Collect activation histograms once, turn them into INT8 scales with any method,
    export TensorRT caches / Q/DQ models, and validate INT8 against FP32.
    """


COMMANDS = (
    calibrate_cmd.calibrate,
    calibrate_cmd.inspect,
    calibrate_cmd.merge,
    calibrate_cmd.list_methods,
    validate_cmds.validate,
    validate_cmds.compare,
    validate_cmds.export_qdq,
    placement_cmd.placement,
    sensitivity_cmd.sensitivity,
    sensitivity_cmd.fallback,
    quantize_cmd.quantize,
    build_cmd.build,
    diff_cmd.diff,
    drift_cmd.drift,
)
for _command in COMMANDS:
    cli.add_command(_command)
