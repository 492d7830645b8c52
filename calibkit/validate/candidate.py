"""What every validation backend returns: a runnable candidate, or why it cannot run here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibkit.errors import CalibkitError


class Unavailable(CalibkitError):
    """The backend cannot run here; the message says why."""


@dataclass
class Candidate:
    label: str  # shown in reports: "ort-int8 (entropy)"
    backend: str
    sess: object
    output_names: list[str]
    note: str = ""
    method: str | None = None
    layer_sess: object = None  # INT8: session exposing activations and their dequantized values
    layers: dict[str, tuple[str, float]] = field(default_factory=dict)  # tensor -> (dq output, scale)
    model_path: Path | None = None

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(self.output_names, feed)

    def run_layers(self, feed: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{tensor: (value before Q/DQ, dequantized value)} for every quantized activation."""
        names = [n for t, (dq, _) in self.layers.items() for n in (t, dq) if n not in feed]
        values = dict(zip(names, self.layer_sess.run(names, feed)))
        values.update(feed)  # a quantized graph input is its own "before" value
        return {t: (values[t], values[dq]) for t, (dq, _) in self.layers.items()}
