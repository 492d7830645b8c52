"""TensorRT 10.x INT8 calibrators fed by any calibkit data source or cache.

The classes derive from the installed ``tensorrt.IInt8*Calibrator`` and so are built on
first use by :func:`calibrator_class` (``import calibkit.trt`` needs no TensorRT). They are
thin: every method forwards to a :class:`~calibkit.trt.feed.CalibrationFeed`.
TensorRT 11 has no calibrators; it builds calibkit's Q/DQ model instead (build11.py).
"""

from __future__ import annotations

from calibkit.errors import CalibkitError
from calibkit.trt.feed import CalibrationFeed

TRT_MAJORS = (10,)  # the conformance test checks every trt.* use here against these versions

# kind -> (TensorRT base class, cache header algorithm). The header must match the attached
# calibrator or TensorRT ignores the cache. EntropyCalibration2 and MinMaxCalibration are
# seen in real caches; EntropyCalibration and LegacyCalibration spellings are unconfirmed.
KINDS = {
    "entropy2": ("IInt8EntropyCalibrator2", "EntropyCalibration2"),
    "entropy": ("IInt8EntropyCalibrator", "EntropyCalibration"),
    "minmax": ("IInt8MinMaxCalibrator", "MinMaxCalibration"),
    "legacy": ("IInt8LegacyCalibrator", "LegacyCalibration"),
}

_classes: dict[str, type] = {}


class _Protocol:
    """The methods TensorRT calls; mixed in before the TensorRT base class."""

    feed: CalibrationFeed

    def get_batch_size(self) -> int:
        return self.feed.batch_size

    def get_batch(self, names):
        try:
            return self.feed.next_pointers(list(names))
        except Exception as exc:  # TensorRT swallows exceptions from callbacks: keep it for the build
            self.error = exc
            return None

    def read_calibration_cache(self):
        return self.feed.read_cache()

    def write_calibration_cache(self, cache) -> None:
        self.feed.write_cache(cache)


class _LegacyProtocol(_Protocol):
    """IInt8LegacyCalibrator's extra methods, with the arguments TensorRT passes (pyInt8.cpp).

    The histogram cache is not kept: TensorRT passes ``length`` by value to Python, so a
    Python ``read_histogram_cache`` cannot hand a cache back (its length never reaches
    TensorRT); returning None makes TensorRT build the histograms, as Polygraphy does."""

    quantile_value: float = 0.9999
    cutoff_value: float = 1.0

    def get_quantile(self) -> float:
        return self.quantile_value

    def get_regression_cutoff(self) -> float:
        return self.cutoff_value

    def read_histogram_cache(self, length):
        return None

    def write_histogram_cache(self, ptr, length) -> None:
        return None


def _build() -> None:
    import tensorrt as trt

    class EntropyCalibrator2(_Protocol, trt.IInt8EntropyCalibrator2):
        def __init__(self, feed: CalibrationFeed) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.feed, self.error = feed, None

    class EntropyCalibrator(_Protocol, trt.IInt8EntropyCalibrator):
        def __init__(self, feed: CalibrationFeed) -> None:
            trt.IInt8EntropyCalibrator.__init__(self)
            self.feed, self.error = feed, None

    class MinMaxCalibrator(_Protocol, trt.IInt8MinMaxCalibrator):
        def __init__(self, feed: CalibrationFeed) -> None:
            trt.IInt8MinMaxCalibrator.__init__(self)
            self.feed, self.error = feed, None

    class LegacyCalibrator(_LegacyProtocol, trt.IInt8LegacyCalibrator):
        def __init__(self, feed: CalibrationFeed) -> None:
            trt.IInt8LegacyCalibrator.__init__(self)
            self.feed, self.error = feed, None

    _classes.update(
        entropy2=EntropyCalibrator2, entropy=EntropyCalibrator, minmax=MinMaxCalibrator, legacy=LegacyCalibrator
    )


def calibrator_class(kind: str) -> type:
    """The calibrator class for ``kind`` (entropy2, entropy, minmax, legacy); imports TensorRT."""
    if kind not in KINDS:
        raise CalibkitError(f"--calibrator {kind!r}: choose from {', '.join(KINDS)}")
    if not _classes:
        from calibkit.trt import require

        require(10, "TensorRT calibrators")
        _build()
    return _classes[kind]


def make_calibrator(kind: str, feed: CalibrationFeed, quantile: float | None = None):
    """An instance for ``kind`` over ``feed`` (the feed's algorithm must match the kind)."""
    if feed.algorithm != KINDS[kind][1]:
        raise CalibkitError(f"internal: feed for {feed.algorithm} given to the {kind} calibrator")
    calib = calibrator_class(kind)(feed)
    if quantile is not None:
        calib.quantile_value = quantile
    return calib
