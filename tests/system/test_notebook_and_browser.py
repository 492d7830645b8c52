"""The walkthrough notebook runs top to bottom; the report renders in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_walkthrough_notebook_executes(tmp_path):
    nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "300 samples, 18 tensors" in outs and "best:" in outs
    assert (tmp_path / "walkthrough-out" / "report.html").is_file()
    assert (tmp_path / "walkthrough-out" / "compare.html").is_file()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(cli, tmp_path):
    cli("validate")
    report = tmp_path / "calibkit-demo" / "report.html"
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [
        ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Failed to load resource" in ln or "net::ERR" in ln
    ]
    assert not console, console
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (2400, 1280) and img.std() > 20  # not blank
    green = (np.abs(img - np.array([0x1B, 0x7F, 0x3B])).sum(-1) < 30).sum()
    assert green > 5000  # the PASS banner is drawn
