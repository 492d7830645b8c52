"""The shipped demo: a residual CNN trained on scikit-learn's digits, with data splits."""

from pathlib import Path

MODEL = Path(__file__).with_name("digits_cnn.onnx")
DATA = Path(__file__).with_name("digits")  # package data: works from a wheel as from a clone
CALIB = DATA / "calib"
VAL = DATA / "val"
PREPROCESS = DATA / "preprocess.json"


def available() -> bool:
    return MODEL.is_file() and CALIB.is_dir() and PREPROCESS.is_file()
