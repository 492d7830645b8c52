"""Synthetic inputs for the corpus models (tools/corpus.py): no data sets are downloaded, but
each input respects its package's own preprocessing (read from its source): image
normalisation, channel order, sizes, audio ranges, token ids inside the vocabulary, 0/1 masks,
recurrent state zeros, scalar sample rates, and the model's own batch axis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

ModelFile = Callable[[str], Path]


def _image(rng, h, w, text=False):
    """Synthetic uint8 HxWx3 image: gradient background, coloured boxes/ellipses, or dark
    glyph-like strokes on a light background when ``text``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if text:
        img = np.full((h, w, 3), rng.uniform(170, 250), np.float32) + rng.normal(0, 6, (h, w, 3))
        x = rng.integers(1, 6)
        ink = rng.uniform(0, 90, 3)
        while x < w - 6:
            cw = int(rng.integers(4, max(6, h // 2)))
            for _ in range(int(rng.integers(2, 4))):
                y0, y1 = sorted(rng.integers(int(h * 0.15), int(h * 0.85), 2))
                x0 = x + int(rng.integers(0, cw))
                t = max(1, h // 16)
                if rng.random() < 0.5:
                    img[y0 : y1 + t, x0 : x0 + t] = ink
                else:
                    img[y0 : y0 + t, x : x + cw] = ink
            x += cw + int(rng.integers(1, 5))
        return np.clip(img, 0, 255).astype(np.uint8)
    base = rng.uniform(0, 255, 3)
    grad = rng.uniform(-1, 1, 3)
    img = base + grad * (xx[..., None] / w * 80) + rng.normal(0, 8, (h, w, 3))
    for _ in range(int(rng.integers(3, 8))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(h / 12, h / 3), rng.uniform(w / 12, w / 3)
        mask = (
            ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            if rng.random() < 0.5
            else (abs(yy - cy) < ry) & (abs(xx - cx) < rx)
        )
        img[mask] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _resize(img, h, w):
    """Nearest-neighbour resize (no cv2/Pillow dependency)."""
    ys = (np.arange(h) * img.shape[0] / h).astype(int)
    xs = (np.arange(w) * img.shape[1] / w).astype(int)
    return img[ys][:, xs]


def _audio(rng, n, speechy=True):
    """Synthetic 16 kHz audio in [-1, 1]: voiced harmonic bursts with a moving pitch + noise."""
    t = np.arange(n) / 16000.0
    f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    phase = 2 * np.pi * np.cumsum(f0) / 16000.0
    sig = sum(rng.uniform(0.2, 1.0) / k * np.sin(k * phase) for k in range(1, 8))
    env = (
        (np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)) > rng.uniform(-0.5, 0.5)).astype(np.float64)
        if speechy
        else 1.0
    )
    x = sig * env * rng.uniform(0.05, 0.6) + rng.normal(0, rng.uniform(0.001, 0.02), n)
    return np.clip(x / max(1.0, np.abs(x).max()), -1, 1).astype(np.float32)


def _chw(x):
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _ocr_line(rng, width_max):
    w = int(rng.integers(width_max // 3, width_max + 1))
    img = _image(rng, 48, w, text=True).astype(np.float32)
    norm = (_chw(img) / 255 - 0.5) / 0.5
    out = np.zeros((3, 48, width_max), np.float32)
    out[:, :, :w] = norm
    return out


def _ort(model: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def _melspec(model_file: ModelFile, audio_int16_float: np.ndarray) -> np.ndarray:
    sess = _ort(model_file("oww_melspectrogram"))
    spec = sess.run(None, {"input": audio_int16_float[None].astype(np.float32)})[0]
    return np.squeeze(spec) / 10 + 2  # openwakeword's melspec_transform


def generate(model_file: ModelFile, name: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` samples of corpus model ``name``'s inputs; ``model_file(name)``: a corpus model's path
    (some inputs are other models' outputs, as the packages chain them)."""
    rng = np.random.default_rng(seed)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    if name == "ppocrv4_det":
        # rapidocr DetPreProcess: cv2 (BGR) image, x/255, (x - ImageNet mean) / std in that channel order
        return {
            "x": np.stack(
                [_chw((_image(rng, 256, 256)[..., ::-1] / 255.0 - mean) / std).astype(np.float32) for _ in range(n)]
            )
        }
    if name == "ppocrv4_rec":
        return {"x": np.stack([_ocr_line(rng, 320) for _ in range(n)])}
    if name == "ppocr_cls":
        return {"x": np.stack([_ocr_line(rng, 192) for _ in range(n)])}
    if name in ("silero_vad", "silero_vad_op18_ifless"):
        return {
            "input": np.stack([_audio(rng, 576) for _ in range(n)]),
            "state": np.zeros((2, n, 128), np.float32),
            "sr": np.array(16000, np.int64),
        }
    if name == "silero_vad_16k_sequence":
        stream = _audio(rng, 512 * n + 64)
        return {
            "input": np.stack([stream[i * 512 : i * 512 + 576] for i in range(n)]),
            "h": np.zeros((1, 1, 128), np.float32),
            "c": np.zeros((1, 1, 128), np.float32),
        }
    if name == "ddddocr_common":
        imgs = [_image(rng, 64, 160, text=True).astype(np.float32).mean(axis=2) for _ in range(n)]  # .convert('L')
        return {"input1": np.stack([((g / 255 - 0.5) / 0.5)[None] for g in imgs]).astype(np.float32)}
    if name == "ddddocr_det":
        out = []
        for _ in range(n):
            h, w = int(rng.integers(120, 480)), int(rng.integers(120, 480))
            img = _image(rng, h, w)
            r = min(416 / h, 416 / w)
            pad = np.full((416, 416, 3), 114, np.uint8)
            pad[: int(h * r), : int(w * r)] = _resize(img, int(h * r), int(w * r))
            out.append(_chw(pad[..., ::-1]).astype(np.float32))  # cv2 BGR, 0..255
        return {"images": np.stack(out)}
    if name == "nudenet_320n":
        out = []
        for _ in range(n):
            h, w = int(rng.integers(160, 480)), int(rng.integers(160, 480))
            s = max(h, w)
            sq = np.zeros((s, s, 3), np.uint8)
            sq[:h, :w] = _image(rng, h, w)
            out.append(_chw(_resize(sq, 320, 320)).astype(np.float32) / 255.0)  # RGB after swapRB
        return {"images": np.stack(out)}
    if name == "oww_melspectrogram":
        return {"input": np.stack([np.round(_audio(rng, 16000) * 32767).astype(np.float32) for _ in range(n)])}
    if name == "oww_embedding":
        wins = []
        for _ in range(n):
            spec = _melspec(model_file, np.round(_audio(rng, 16000) * 32767))
            s = int(rng.integers(0, spec.shape[0] - 76 + 1))
            wins.append(spec[s : s + 76, :, None])
        return {"input_1": np.stack(wins).astype(np.float32)}
    if name == "oww_hey_mycroft":
        emb = _ort(model_file("oww_embedding"))
        feats = []
        for _ in range(n):
            spec = _melspec(model_file, np.round(_audio(rng, 32000) * 32767))
            wins = np.stack([spec[i : i + 76, :, None] for i in range(0, spec.shape[0] - 76 + 1, 8)][:16]).astype(
                np.float32
            )
            feats.append(emb.run(None, {"input_1": wins})[0].reshape(len(wins), 96))
        return {"input_1": np.stack(feats).astype(np.float32)}
    if name == "oww_silero_vad":
        return {
            "input": np.stack([np.round(_audio(rng, 640) * 32767) / 32767 for _ in range(n)]).astype(np.float32),
            "h": np.zeros((2, n, 64), np.float32),
            "c": np.zeros((2, n, 64), np.float32),
            "sr": np.array(16000, np.int64),
        }
    if name == "minilm_l6":
        vocab = (model_file("minilm_l6").parent / "vocab.txt").read_text(encoding="utf-8").splitlines()
        cls_, sep, pad = vocab.index("[CLS]"), vocab.index("[SEP]"), vocab.index("[PAD]")
        first_word = vocab.index("the")  # ids below are [unused*] / punctuation / single characters
        ids = np.full((n, 64), pad, np.int64)
        mask = np.zeros((n, 64), np.int64)
        for i in range(n):
            L = int(rng.integers(8, 65))
            ids[i, :L] = rng.integers(first_word, len(vocab), L)
            ids[i, 0], ids[i, L - 1] = cls_, sep
            mask[i, :L] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((n, 64), np.int64)}
    if name in ("mtcnn_onet", "mtcnn_rnet_fp16"):
        s = 48 if name == "mtcnn_onet" else 24
        x = np.stack(
            [(_chw(_resize(_image(rng, 96, 96), s, s)).astype(np.float32) - 127.5) * 0.0078125 for _ in range(n)]
        )
        return {"input": x.astype(np.float16 if name.endswith("fp16") else np.float32)}
    raise KeyError(name)
