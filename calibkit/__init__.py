"""calibkit: INT8 calibration workbench for TensorRT and ONNX Runtime.

from calibkit import calibrate
result = calibrate("model.onnx", data="calib.npz", method="entropy", output_dir="out")
"""

from calibkit.errors import CalibkitError

__version__ = "0.1.0"
__all__ = ["CalibkitError", "__version__", "calibrate", "load_histograms", "merge_histograms"]


def __getattr__(name: str):
    # Lazy: `import calibkit` and `calibkit --help` stay fast and need no ONNX Runtime.
    if name == "calibrate":
        from calibkit.calibration import calibrate

        return calibrate
    if name == "load_histograms":
        from calibkit.artifacts.histograms import load

        return load
    if name == "merge_histograms":
        from calibkit.artifacts.histograms import merge_files

        return merge_files
    raise AttributeError(name)
