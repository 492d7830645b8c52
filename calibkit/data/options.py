"""How a data stream is cut into runs: one option group shared by every command that feeds a
model (``--batch-axis``, ``--no-rebatch``, ``--max-samples``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FeedOptions:
    """``batch_axes``: input -> sample axis (None: passed whole to every run), overriding what
    the model says; ``rebatch=False`` runs each feed a loader yields as given; ``max_samples``
    stops the stream after that many samples."""

    batch_axes: Mapping[str, int | None] = field(default_factory=dict)
    rebatch: bool = True
    max_samples: int | None = None

    def meta(self) -> dict[str, Any]:
        """What results and histograms.npz record of it (axes sorted, None as "none")."""
        axes = {k: ("none" if v is None else v) for k, v in sorted(self.batch_axes.items())}
        return {"batch_axes": axes, "rebatch": self.rebatch, "max_samples": self.max_samples}

    @classmethod
    def of(cls, feed: FeedOptions | None) -> FeedOptions:
        return cls() if feed is None else feed
