"""CUDA provider + CuPy: activations stay in device memory and are reduced there.

Padding is removed along each tensor's own batch axis (``Plan.axes``). Tensors without a batch
axis (only on unpadded models: see collect.py) are small; they are copied to the host and
counted once per sample there, like on the CPU path.
"""

from __future__ import annotations

import numpy as np

from calibkit.collect import Plan, _ort_run, _pad, check_guards
from calibkit.data import FeedStats
from calibkit.data.feed import _take
from calibkit.histogram import TensorHistogram


def collect_device(p: Plan, batches, stats: FeedStats, run_batch: int, progress) -> dict[str, TensorHistogram]:
    from calibkit.gpu_reduce import DeviceHistograms, ortvalue_to_cupy

    acts = [o for o in p.outputs if o not in p.guards]
    on_device = [o for o in acts if isinstance(p.axes.get(o), int) or p.axes.get(o) == "?"]
    device_hists = DeviceHistograms(on_device)
    host_hists = {s.name: TensorHistogram() for s in p.specs if s.dtype.kind == "f"}
    host_hists.update({o: TensorHistogram() for o in acts if o not in on_device})
    binding = p.sess.io_binding()
    non_float: set[str] = set()
    stats.run_batch = run_batch
    for feed in batches:
        n = feed.samples
        padded = p.pad and n < run_batch
        for k, v in (_pad(feed, run_batch, p.specs) if padded else feed).items():
            binding.bind_cpu_input(k, np.ascontiguousarray(v))
        for name in p.outputs:
            binding.bind_output(name, "cuda", 0)

        def run() -> None:
            p.sess.run_with_iobinding(binding)
            binding.synchronize_outputs()

        _ort_run(run, p.model_name, p.source)
        values = dict(zip(p.outputs, binding.get_outputs()))
        if p.guards:
            check_guards(p, {g: values[g].numpy() for g in p.guards})
        arrays = {}
        for name in acts:
            arr = ortvalue_to_cupy(values[name])
            if arr is None:
                non_float.add(name)
                continue
            axis = p.axes.get(name)
            if name in on_device:
                arrays[name] = _take(arr, axis, 0, n) if padded and isinstance(axis, int) else arr
            else:
                host_hists[name].update(arr.get(), weight=n)
        device_hists.update(arrays)
        for s in p.specs:
            if s.name in host_hists:
                host_hists[s.name].update(feed[s.name], weight=n if s.axis is None else 1)
        if progress:
            progress(stats.samples)
    hists = {**host_hists, **device_hists.to_host()}
    for name in non_float:
        hists.pop(name, None)
    return hists
