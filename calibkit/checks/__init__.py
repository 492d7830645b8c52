"""Checks of a calibration, for CI and before shipping: ``diff`` (two calibrations of one model,
per tensor), ``drift`` (has new data moved away from what a calibration saw?) and
``sufficiency`` (is the calibration data enough: ``--shards``)."""
