"""Threshold methods. Importing this package registers every built-in method."""

from calibkit.methods import auto, entropy, minmax, mse, percentile  # noqa: F401  (registration)
from calibkit.methods.base import REGISTRY, Method, config_params, get, make_config, names, parse_spec, spec_of

__all__ = ["REGISTRY", "Method", "config_params", "get", "make_config", "names", "parse_spec", "spec_of"]
