"""The shipped demo: a residual CNN trained on scikit-learn's digits, with data splits."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = Path(__file__).with_name("digits_cnn.onnx")
DATA = ROOT / "calibration_data" / "digits"
CALIB = DATA / "calib"
VAL = DATA / "val"
PREPROCESS = DATA / "preprocess.json"


def available() -> bool:
    return MODEL.is_file() and CALIB.is_dir() and PREPROCESS.is_file()
