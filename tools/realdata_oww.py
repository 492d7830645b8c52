"""oww_embedding data set of tools/realdata.py: espeak-ng speech -> openWakeWord mel windows.

openwakeword 0.4.0 AudioFeatures: 16 kHz int16 PCM as float32 -> melspectrogram.onnx ->
squeeze -> x/10 + 2 (melspec_transform) -> 76-frame windows with step 8 -> embedding_model.onnx
input_1 [N, 76, 32, 1] -> [N, 1, 1, 96].
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import wave

import numpy as np
import realdata_text as T
from realdata import Built, model_file, run_model, session, split_counts
from scipy.signal import resample_poly

VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f4")
ORDER = ("test", "search", "calib")
WINDOW, STEP = 76, 8


def sentences(rng) -> list[str]:
    """Unique sentences and clauses (cut at , ; : too) of 3-12 words of the real text sources,
    shuffled by ``rng``."""
    seen, out = set(), []
    for _, text in T.sources():
        for s in re.split(r"(?<=[.!?;:,])\s+|\n\s*\n", text.replace('"', "").replace("``", "").replace("''", "")):
            s = " ".join(s.split()).strip(" -*'")
            if 3 <= len(s.split()) <= 12 and re.fullmatch(r"[A-Za-z][A-Za-z ,.;:'!?()-]*", s) and s not in seen:
                seen.add(s)
                out.append(s)
    return [out[i] for i in rng.permutation(len(out))]


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's 22050 Hz int16 speech resampled to 16 kHz float64 (int16 scale)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(1 << 30), np.int16).astype(np.float64)
    return resample_poly(x, 16000 // 50, rate // 50)


def utterance(rng, text: str) -> tuple[np.ndarray, dict]:
    """16 kHz int16 audio (as float32) of ``text``: a voice, speed, pitch, gain, noise, silences."""
    voice = f"{VOICES[int(rng.integers(len(VOICES)))]}+{VARIANTS[int(rng.integers(len(VARIANTS)))]}"
    speed, pitch = int(rng.integers(130, 201)), int(rng.integers(25, 76))
    x = speak(text, voice, speed, pitch)
    x = x / max(np.abs(x).max(), 1.0) * rng.uniform(0.2, 0.9) * 32767
    pad = [np.zeros(int(rng.uniform(0.15, 0.4) * 16000)) for _ in range(2)]
    x = np.concatenate([pad[0], x, pad[1]])
    snr = rng.uniform(15, 40)
    x = x + rng.normal(0, np.sqrt(np.mean(x**2)) / 10 ** (snr / 20), len(x))
    info = {"voice": voice, "speed": speed, "pitch": pitch, "snr_db": round(float(snr), 1)}
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16).astype(np.float32), info


def build(counts, seed, log) -> Built:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("oww_embedding needs espeak-ng: apt-get install espeak-ng")
    model = model_file("oww_embedding")
    mel = session(model_file("oww_melspectrogram"), threads=1)
    pool = iter(sentences(np.random.default_rng(seed)))
    per = {}
    for split in ORDER:
        per[split] = []
        for i in range(counts[split]):
            rng = np.random.default_rng([seed, ORDER.index(split), i])
            while True:
                text = next(pool, None)
                if text is None:
                    raise SystemExit("oww_embedding: out of sentences; ask for fewer samples")
                audio, info = utterance(rng, text)
                spec = np.squeeze(mel.run(None, {"input": audio[None]})[0]) / 10 + 2  # openwakeword melspec_transform
                starts = list(range(0, spec.shape[0] - WINDOW + 1, STEP))
                if starts:
                    break
            s = starts[int(rng.integers(len(starts)))]
            per[split].append((text, info, s, spec[s : s + WINDOW, :, None].astype(np.float32)))
    rows = [r for split in ("calib", "search", "test") for r in per[split]]
    inputs, labels, items, at = {}, {}, {}, 0
    for split in ("calib", "search", "test"):
        inputs[split] = {"input_1": np.stack([r[3] for r in per[split]])}
        labels[split] = np.arange(at, at + counts[split], dtype=np.int64)
        items[split] = [r[0] for r in per[split]]
        at += counts[split]
    ref = run_model(session(model, threads=1), {"input_1": np.stack([r[3] for r in rows])}, 64)
    reference = next(iter(ref.values())).reshape(len(rows), -1).astype(np.float32)
    ver = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    espeak = (re.findall(r"\d+(?:\.\d+)+", ver) or ["(unknown version)"])[0]
    doc = {
        "dataset": "oww_embedding",
        "seed": seed,
        "threshold": 0.99,
        "reference": "reference.npy",
        "texts": [r[0] for r in rows],
        "speech": [{**r[1], "window_start_frame": r[2]} for r in rows],
        "items": items,
        "espeak_ng": ver,
        "sources": [n for n, _ in T.sources()],
    }
    readme = f"""oww_embedding (openWakeWord 0.4.0 speech embedding model, Google speech_embedding via
    tf2onnx): {split_counts(counts)} mel-spectrogram windows of real English sentences (no sentence in
    two splits), seed {seed}, one window per utterance. Sentences of 3-12 words from {T.sources()[-1][0]}
    and the licence texts in /usr/share/common-licenses, spoken by eSpeak NG {espeak} with a seeded
    voice ({len(VOICES)} English accents x {len(VARIANTS)} voice variants), speed 130-200 wpm and pitch
    25-75, resampled from 22050 Hz to 16 kHz (scipy resample_poly), scaled to a peak of 20-90% of int16
    full scale, padded with 0.15-0.4 s of silence on each side, white noise at 15-40 dB SNR, rounded to
    int16. Features exactly as openwakeword AudioFeatures: the corpus melspectrogram.onnx on the int16
    samples as float32, squeezed, x/10 + 2, a 76-frame window at a seeded multiple-of-8 start:
    input_1 [N,76,32,1]. The task has no ground truth of its own (the embedding feeds wake-word
    heads), so the reference is FP32 itself: reference.npy holds FP32's embeddings (ONNX Runtime CPU,
    one thread) of every sample, labels are row indices into it. Metric (metric.py): score = 1 when
    the cosine between the output embedding and FP32's is >= 0.99 (NaN output is a miss); agree(a, b)
    = the same test between two outputs, so score equals agree(candidate, FP32) here. FP32 score on
    test: {{fp32}} (1 by construction)."""
    return Built(model, inputs, labels, doc, readme, batch=64, files={"reference.npy": reference})
