"""ppocrv4_det data set of tools/realdata.py: pages of rendered text lines with DB-style masks.

A page is SIZE x SIZE (a multiple of 32, fed as is: PaddleOCR's default det_limit_type 'max' /
960 leaves it unchanged). Label of a line, as PP-OCR's DB training makes its probability-map
target: the line's annotation box (the ink box padded by 0.4 of its height on every side, as
loose as public annotations) shrunk by D = A (1 - r^2) / L with r = 0.4 (MakeShrinkMap).
"""

from __future__ import annotations

import numpy as np
import realdata_text as T
from PIL import Image, ImageDraw
from realdata import Built, model_file, split_counts
from realdata_ocr import ORDER, _sources_note

SIZE = 320
PAD, SHRINK = 0.4, 0.4
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # rapidocr DetPreProcess


def label_rect(box, size=SIZE) -> list[int]:
    """DB shrink-map rectangle [x0, y0, x1, y1] of an ink box."""
    x0, y0, x1, y1 = box
    p = PAD * (y1 - y0)
    x0, y0, x1, y1 = x0 - p, y0 - p, x1 + p, y1 + p
    w, h = x1 - x0, y1 - y0
    d = w * h * (1 - SHRINK**2) / (2 * (w + h))
    r = [round(x0 + d), round(y0 + d), round(x1 - d), round(y1 - d)]
    return [min(max(v, 0), size) for v in r]


def _texture(rng, size) -> np.ndarray:
    """Low-frequency photo-like texture (smoothed noise, bilinear upsampled)."""
    g = int(rng.integers(4, 12))
    coarse = rng.normal(0, 1, (g, g, 3)) * rng.uniform(4, 18)
    return T.resize_linear(np.clip(coarse + 128, 0, 255).astype(np.uint8), size, size).astype(np.float32) - 128


def page(rng, stream, ff, size=SIZE):
    """(uint8 RGB page, [(text, ink box)]) with 2-6 non-overlapping lines."""
    photo = rng.random() < 0.5
    img = T.background(rng, size, size, photo=photo)
    if photo:
        img = img + _texture(rng, size)
    lines, occ = [], np.zeros((size, size), bool)
    want, tries = int(rng.integers(2, 7)), 0
    while len(lines) < want and tries < 60:
        tries += 1
        f = T.font(ff[int(rng.integers(len(ff)))], int(rng.integers(12, 33)))
        px, py = int(rng.integers(4, size - 24)), int(rng.integers(4, size - 24))
        txt = next(stream)
        x0, y0, x1, y1 = f.getbbox(txt)
        if px + x1 - x0 > size - 4 or py + y1 - y0 > size - 4:
            continue  # does not fit here: the text is spent anyway (each text is used at most once)
        alpha = Image.new("L", (size, size), 0)
        ImageDraw.Draw(alpha).text((px - x0, py - y0), txt, fill=255, font=f)
        a = np.asarray(alpha, np.float32) / 255.0
        ys, xs = np.nonzero(a > 0.25)
        if not len(xs):
            continue
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        m = int(PAD * (box[3] - box[1])) + 2
        if occ[max(0, box[1] - m) : box[3] + m, max(0, box[0] - m) : box[2] + m].any():
            continue
        occ[box[1] : box[3], box[0] : box[2]] = True
        ink = np.clip(rng.uniform(0, 90) + rng.uniform(-20, 20, 3), 0, 255)
        a = a[..., None] * rng.uniform(0.85, 1.0)
        img = img * (1 - a) + ink * a
        lines.append((txt, box))
    return T.finish(rng, img, blur_max=0.8, noise_max=6.0), lines


def build(counts, seed, log) -> Built:
    model = model_file("ppocrv4_det")
    ff = T.fonts()
    stream = T.text_stream(np.random.default_rng(seed))
    pages, inputs, labels, items = [], {}, {}, {}
    per = {}
    for split in ORDER:
        per[split] = []
        for i in range(counts[split]):
            rng = np.random.default_rng([seed, ORDER.index(split), i])
            while True:
                img, lines = page(rng, stream, ff)
                if lines:
                    break
            per[split].append((img, lines))
    for split in ("calib", "search", "test"):
        labels[split] = np.arange(len(pages), len(pages) + counts[split], dtype=np.int64)
        xs = []
        for img, lines in per[split]:
            pages.append(
                {
                    "lines": [t for t, _ in lines],
                    "boxes": [b for _, b in lines],
                    "label_rects": [label_rect(b) for _, b in lines],
                }
            )
            xs.append(((img[..., ::-1] / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32))
        inputs[split] = {"x": np.stack(xs)}
        items[split] = [t for _, lines in per[split] for t, _ in lines]
    doc = {
        "dataset": "ppocrv4_det",
        "seed": seed,
        "size": SIZE,
        "threshold": 0.3,
        "label": f"ink box padded by {PAD} x its height, shrunk by D = A(1 - {SHRINK}^2)/L (DB MakeShrinkMap)",
        "pages": pages,
        "items": items,
        "fonts": [p.name for p in ff],
        "sources": [n for n, _ in T.sources()],
    }
    n_lines = sum(len(p["lines"]) for p in pages)
    readme = f"""ppocrv4_det (PP-OCRv4 DBNet text detector, rapidocr_onnxruntime 1.3.24): {SIZE}x{SIZE}
    pages, {split_counts(counts)} ({n_lines} text lines in all; no line in two splits), seed {seed}. Each
    page holds 2-6 non-overlapping lines of real English text (phrases of 2-5 words from {_sources_note()},
    plus ~15% numbers and dates), rendered with Pillow in {len(ff)} TrueType fonts at 12-32 px, dark ink
    on light tinted backgrounds with gradients, half of them photo-like (blotches, low-frequency
    texture), Gaussian noise, sometimes blur and JPEG. Preprocessing as RapidOCR's DetPreProcess on a
    cv2 (BGR) image: x/255, minus ImageNet mean (0.485, 0.456, 0.406), over std (0.229, 0.224, 0.225)
    in that channel order, CHW; the page is a multiple of 32 and fed unresized: x [N,3,{SIZE},{SIZE}].
    Labels are page indices into labels.json "pages", which holds each line's text, ink box and label
    rectangle: the DB probability-map target as PP-OCR trains it (the ink box padded by {PAD} of its
    height on each side, as loose as public annotations, shrunk by D = A(1 - 0.4^2)/L). Metric
    (metric.py): score = pixel F1 of (probability map > 0.3, the DB post-process threshold) against
    the union of the label rectangles (NaN output is a miss); agree = pixel F1 of the two thresholded
    maps (1 when both are empty). FP32 mean F1 on test: {{fp32}}."""
    return Built(model, inputs, labels, doc, readme, batch=8)
