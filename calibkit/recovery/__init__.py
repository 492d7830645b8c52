"""Accuracy recovery that keeps layers in INT8: thresholds by the consumer's error, bias
correction, adaptive weight rounding (and, from their own modules, SmoothQuant and cross-layer
equalization). Every technique ends in a float model whose weights and biases carry the
result, so the Q/DQ export, a TensorRT 10 build from the cache and the validation all use the
same corrected weights.
"""

from calibkit.recovery.recover import (
    ROUNDINGS,
    THRESHOLDS,
    RecoveryOptions,
    choose_thresholds,
    recover_weights,
)

__all__ = ["ROUNDINGS", "THRESHOLDS", "RecoveryOptions", "choose_thresholds", "recover_weights"]
