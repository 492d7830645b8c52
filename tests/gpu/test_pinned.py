"""Page-locked staging buffers without importing cupyx (GPU machine only)."""

from __future__ import annotations

import numpy as np
import pytest

from calibkit.sessions import cuda_device_count

cp = pytest.importorskip("cupy")
if cuda_device_count() == 0:
    pytest.skip("no NVIDIA GPU visible", allow_module_level=True)


def test_empty_pinned_is_page_locked_and_writable():
    from calibkit.data.prefetch import empty_pinned

    a = empty_pinned((3, 5), np.float32)
    assert a.shape == (3, 5) and a.dtype == np.float32
    a[:] = np.arange(15, dtype=np.float32).reshape(3, 5)
    d = cp.asarray(a)
    assert np.array_equal(cp.asnumpy(d), a)
    assert cp.cuda.runtime.pointerGetAttributes(a.ctypes.data).type == cp.cuda.runtime.memoryTypeHost
    assert empty_pinned((0, 4), np.int64).shape == (0, 4)
