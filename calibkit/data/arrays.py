"""``.npy`` / ``.npz`` sources, read in chunks so memory does not grow with the file.

``.npz`` is keyed by input name (as Model Optimizer reads it), each array ``[N, ...]``;
``.npy`` holds one array ``[N, ...]`` for a single-input model. Members are streamed from
the archive (compressed or not) ``chunk`` samples at a time.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from calibkit.data.base import Feed, hash_files
from calibkit.errors import CalibkitError


def _read_header(fh, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = npformat.read_magic(fh)
        read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, fortran, dtype = read(fh)
    except (ValueError, OSError) as exc:
        raise CalibkitError(f"{where} is not a valid .npy array ({exc}); re-save it with numpy.save") from None
    if dtype.hasobject:
        raise CalibkitError(f"{where} holds Python objects; save plain numeric arrays")
    return shape, fortran, dtype


def _chunks(fh, shape, fortran, dtype, chunk: int, where: str) -> Iterator[np.ndarray]:
    if fortran and len(shape) > 1:
        raise CalibkitError(f"{where} is Fortran-ordered; re-save it with np.ascontiguousarray")
    if not shape:
        raise CalibkitError(f"{where} is a scalar; arrays need a leading sample axis [N, ...]")
    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    for start in range(0, shape[0], chunk):
        n = min(chunk, shape[0] - start)
        buf = fh.read(n * row)
        if len(buf) != n * row:
            raise CalibkitError(f"{where} is truncated (expected {shape[0]} samples); re-save it")
        yield np.frombuffer(buf, dtype=dtype).reshape((n, *shape[1:]))


class NpzSource:
    def __init__(self, path: Path, chunk: int = 64) -> None:
        self.path = path
        self.chunk = chunk
        self.description = f"npz {path}"
        try:
            with zipfile.ZipFile(path) as zf:
                self.keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                self._shapes = {}
                for k in self.keys:
                    with zf.open(k + ".npy") as fh:
                        self._shapes[k] = _read_header(fh, f"{path}[{k}]")[0]
        except zipfile.BadZipFile:
            raise CalibkitError(f"{path} is not a valid .npz archive; save it with numpy.savez") from None
        if not self.keys:
            raise CalibkitError(f"{path} holds no arrays; save one array per model input, keyed by input name")
        counts = {k: (s[0] if s else 0) for k, s in self._shapes.items()}
        if len(set(counts.values())) != 1:
            raise CalibkitError(f"{path}: arrays disagree on the number of samples: {counts}")

    def num_samples(self) -> int | None:
        return int(next(iter(self._shapes.values()))[0]) if self._shapes else 0

    def fingerprint(self) -> str | None:
        return hash_files([self.path])

    def batches(self) -> Iterator[Feed]:
        with zipfile.ZipFile(self.path) as zf:
            handles = {k: zf.open(k + ".npy") for k in self.keys}
            try:
                gens = {}
                for k, fh in handles.items():
                    shape, fortran, dtype = _read_header(fh, f"{self.path}[{k}]")
                    gens[k] = _chunks(fh, shape, fortran, dtype, self.chunk, f"{self.path}[{k}]")
                while True:
                    feed = {}
                    for k, g in gens.items():
                        part = next(g, None)
                        if part is None:
                            return
                        feed[k] = part
                    yield feed
            finally:
                for fh in handles.values():
                    fh.close()


class NpySource:
    def __init__(self, path: Path, input_name: str, chunk: int = 64) -> None:
        self.path = path
        self.input_name = input_name
        self.chunk = chunk
        self.description = f"npy {path}"
        try:
            self._array = np.load(path, mmap_mode="r", allow_pickle=False)
        except EOFError:
            raise CalibkitError(f"{path} is empty, not a .npy array; re-save it with numpy.save") from None
        except (ValueError, OSError) as exc:
            raise CalibkitError(f"{path} is not a valid .npy array ({exc}); re-save it with numpy.save") from None
        if self._array.ndim == 0:
            raise CalibkitError(f"{path} is a scalar; arrays need a leading sample axis [N, ...]")

    def num_samples(self) -> int | None:
        return int(self._array.shape[0])

    def fingerprint(self) -> str | None:
        return hash_files([self.path])

    def batches(self) -> Iterator[Feed]:
        for start in range(0, self._array.shape[0], self.chunk):
            yield {self.input_name: np.asarray(self._array[start : start + self.chunk])}
