"""``.npy`` / ``.npz`` sources, read in chunks so memory does not grow with the file.

``.npz`` is keyed by input name (as Model Optimizer reads it), each array ``[N, ...]``;
``.npy`` holds one array ``[N, ...]`` for a single-input model. Members are streamed from
the archive (compressed or not) ``chunk`` samples at a time.
"""

from __future__ import annotations

import zipfile
import zlib
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
    """One array per input, keyed by name. Arrays with samples on axis 0 are streamed
    ``chunk`` samples at a time; an input with its samples on another axis (``[2, N, 128]``
    state) is read whole and sliced; an input without a sample axis (a 0-d scalar, shared
    state) is passed whole with every chunk."""

    hashes_files = True  # fingerprint() hashes the files: no streamed hash needed

    def __init__(self, path: Path, chunk: int = 64, specs: list | None = None) -> None:
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
        given = {s.name: s.axis for s in specs or []}
        self.axes: dict[str, int | None] = {}
        for k, shape in self._shapes.items():
            axis = given.get(k, 0) if shape else None
            if axis is not None and axis >= len(shape):
                raise CalibkitError(
                    f"{path}[{k}] has shape {shape} but the model input has its samples on axis {axis}; re-save it as the model consumes it"
                )
            self.axes[k] = axis
        counts = {k: self._shapes[k][a] for k, a in self.axes.items() if a is not None}
        if len(set(counts.values())) > 1:
            extra = [k for k in counts if specs and k not in given]
            if extra:
                raise CalibkitError(
                    f"{path}: array {extra[0]!r} is not an input of the model (its inputs: {', '.join(given)}) and "
                    f"disagrees on the number of samples ({counts}); remove it from the .npz"
                )
            raise CalibkitError(
                f"{path}: arrays disagree on the number of samples: {counts}; give each input's sample axis with --batch-axis NAME:AXIS (NAME:none to pass it whole)"
            )
        self._n = next(iter(counts.values()), 1)

    def num_samples(self) -> int | None:
        return int(self._n)

    def fingerprint(self) -> str | None:
        return hash_files([self.path])

    def batches(self) -> Iterator[Feed]:
        try:
            yield from self._batches()
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a damaged member: CRC, deflate, truncation
            raise CalibkitError(
                f"{self.path} is damaged ({str(exc) or type(exc).__name__}); re-save it with numpy.savez"
            ) from None

    def _batches(self) -> Iterator[Feed]:
        with zipfile.ZipFile(self.path) as zf:
            handles = {k: zf.open(k + ".npy") for k in self.keys}
            try:
                gens: dict[str, Iterator[np.ndarray]] = {}
                whole: dict[str, np.ndarray] = {}
                for k, fh in handles.items():
                    where = f"{self.path}[{k}]"
                    shape, fortran, dtype = _read_header(fh, where)
                    if self.axes[k] == 0:
                        gens[k] = _chunks(fh, shape, fortran, dtype, self.chunk, where)
                    else:
                        whole[k] = _read_whole(fh, shape, fortran, dtype, where)
                if not gens and not any(self.axes[k] is not None for k in whole):
                    yield dict(whole)
                    return
                for start in range(0, self._n, self.chunk):
                    feed = {}
                    for k in self.keys:
                        axis = self.axes[k]
                        if axis == 0:
                            part = next(gens[k], None)
                            if part is None:
                                return
                            feed[k] = part
                        elif axis is None:
                            feed[k] = whole[k]
                        else:
                            index = [slice(None)] * whole[k].ndim
                            index[axis] = slice(start, start + self.chunk)
                            feed[k] = whole[k][tuple(index)]
                    yield feed
            finally:
                for fh in handles.values():
                    fh.close()


def _read_whole(fh, shape, fortran, dtype, where: str) -> np.ndarray:
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = fh.read(size)
    if len(buf) != size:
        raise CalibkitError(f"{where} is truncated; re-save it")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")


class NpySource:
    hashes_files = True  # fingerprint() hashes the files: no streamed hash needed

    def __init__(self, path: Path, input_name: str, chunk: int = 64) -> None:
        self.path = path
        self.input_name = input_name
        self.chunk = chunk
        self.description = f"npy {path}"
        try:
            self._array = np.load(path, mmap_mode="r", allow_pickle=False)
        except EOFError:
            raise CalibkitError(f"{path} is empty, not a .npy array; re-save it with numpy.save") from None
        except (ValueError, OSError, zipfile.BadZipFile) as exc:  # PK... bytes: numpy tries it as a zip
            raise CalibkitError(f"{path} is not a valid .npy array ({exc}); re-save it with numpy.save") from None
        if not isinstance(self._array, np.ndarray):  # an .npz archive under a .npy name
            self._array.close()
            raise CalibkitError(f"{path} is an .npz archive, not a .npy array; name it .npz (inputs by key)")
        if self._array.ndim == 0:
            raise CalibkitError(f"{path} is a scalar; arrays need a leading sample axis [N, ...]")

    def num_samples(self) -> int | None:
        return int(self._array.shape[0])

    def fingerprint(self) -> str | None:
        return hash_files([self.path])

    def batches(self) -> Iterator[Feed]:
        for start in range(0, self._array.shape[0], self.chunk):
            yield {self.input_name: np.asarray(self._array[start : start + self.chunk])}
