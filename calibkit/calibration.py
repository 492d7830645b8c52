"""``calibrate``: the Python API behind ``calibkit calibrate`` (the CLI is a thin shell).

model + data -> histograms.npz (reused when fingerprints match) -> scales.json,
<model>.cache (TensorRT) and <model>.tensors.json (ONNX Runtime TensorsData).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibkit import methods
from calibkit.artifacts import histograms as store
from calibkit.artifacts import tensors_data as ort_tensors
from calibkit.artifacts import trt_cache
from calibkit.artifacts.scales import ScaleTable, check_table, compute
from calibkit.collect.host import Collection, collect
from calibkit.data import FeedStats, Preprocess, applied_preprocess, open_source, preprocess_fingerprint, run_batches
from calibkit.data.options import FeedOptions
from calibkit.errors import CalibkitError
from calibkit.graph.model import check_fingerprint, fingerprint_file, has_external, input_specs, load
from calibkit.graph.subgraphs import tensor_names
from calibkit.numerics import clipping
from calibkit.outputs.publish import Transaction
from calibkit.qdq.fusion import TENSOR_SELECTIONS

HISTOGRAMS = "histograms.npz"
SCALES = "scales.json"


@dataclass
class CalibrateResult:
    table: ScaleTable
    histograms: store.HistogramSet
    outputs: dict[str, Path]
    reused: str | None = None  # why stored histograms were used instead of inference
    collection: Collection | None = None
    timings: dict[str, float] = field(default_factory=dict)
    clip_warnings: list[clipping.ClipWarning] = field(
        default_factory=list
    )  # tensors clipping more than warn_clip, worst first
    warn_clip: float = clipping.DEFAULT_WARN_CLIP


def _data_fingerprint(source, specs, run_batch: int, feed: FeedOptions, fp: str | None) -> str:
    if fp is not None:
        return fp
    stats = FeedStats()
    for _ in run_batches(source, specs, run_batch or 64, stats, feed):
        pass
    return "streamed:" + stats.streamed_fingerprint()


def calibrate(
    model: str | Path,
    data: Any = None,
    method: str = "entropy",
    config: Any = None,
    output_dir: str | Path = ".",
    histograms: str | Path | None = None,
    batch_size: int | None = None,
    preprocess: Preprocess | None = None,
    recollect: bool = False,
    force: bool = False,
    trt_version: str | None = None,
    cache_algorithm: str = "EntropyCalibration2",
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    on_source: Callable[[Any], None] | None = None,
    feed: FeedOptions | None = None,
    devices: list[int] | None = None,
    workers: int = 0,
    ray: str | None = None,
    warn_clip: float = clipping.DEFAULT_WARN_CLIP,
    tensors: str = "all",
    gpu_memory: int | None = None,
) -> CalibrateResult:
    """``tensors``: which tensors get histograms: ``all`` (every float tensor), ``trt`` (not
    those inside TensorRT's fused layers: all a TensorRT 10 cache needs), ``qdq`` (the Q/DQ
    placement's inputs); calibkit/qdq/fusion.py. Left-out tensors are listed in scales.json.
    ``feed``: how the data is cut into runs (FeedOptions: batch axes, rebatch, max_samples);
    ``devices``: GPU indices to shard the data over, one process each (multi_gpu.py);
    ``workers``: processes decoding images; ``ray``: run the ``devices`` shards as Ray actors
    ("auto" or HOST:PORT; results never change with any of these); tensors whose
    threshold clips more than ``warn_clip`` of their values are returned in ``clip_warnings``
    and listed in scales.json. ``gpu_memory``: bytes of GPU memory a CUDA collection may use
    (None: the default bound, collect/cuda/driver.py); results never change with it."""
    t0 = time.perf_counter()
    model_path = Path(model)
    proto = load(model_path, keep_external=True)  # weights stay on disk: ORT reads them
    model_fp = fingerprint_file(model_path)
    methods.get(method)
    if tensors not in TENSOR_SELECTIONS:
        raise CalibkitError(f"--tensors {tensors!r} must be one of {', '.join(TENSOR_SELECTIONS)}")
    warn_clip = clipping.check_limit(warn_clip)
    if cache_algorithm not in trt_cache.ALGORITHMS:
        raise CalibkitError(f"--cache-algorithm {cache_algorithm!r} must be one of {', '.join(trt_cache.ALGORITHMS)}")
    version = trt_version or trt_cache.installed_trt_version() or trt_cache.DEFAULT_TRT_VERSION
    version_code = trt_cache.encode_version(version)
    with Transaction(Path(output_dir), "calibrate") as tx:
        run = {"devices": devices, "workers": workers, "ray": ray, "tensors": tensors, "gpu_memory": gpu_memory}
        hset, reused, collection, fresh = _histograms(
            tx,
            model_path,
            proto,
            model_fp,
            data,
            histograms,
            batch_size,
            preprocess,
            recollect,
            force,
            device,
            progress,
            on_source,
            FeedOptions.of(feed),
            run,
        )
        t_collect = time.perf_counter()
        table = compute(hset, method, config, device=device)
        t_thresh = time.perf_counter()
        staged = stage_scales(table, hset, model_path, model_fp, version_code, cache_algorithm, warn_clip)
        outputs: dict[str, Path] = {}
        if fresh:
            outputs["histograms"] = store.save(hset, HISTOGRAMS, tx)
        elif histograms is None or Path(histograms).resolve() == (tx.directory / HISTOGRAMS).resolve():
            tx.keep(HISTOGRAMS)  # reused in place (also `--histograms OUT/histograms.npz -o OUT`): still the set's
        outputs.update(write_scales(tx, staged, tx.directory))
        tx.commit()
    return CalibrateResult(
        table,
        hset,
        outputs,
        reused,
        collection,
        {"collect": t_collect - t0, "threshold": t_thresh - t_collect, "total": time.perf_counter() - t0},
        clipping.warnings(table, warn_clip),
        warn_clip,
    )


def stage_scales(
    table: ScaleTable,
    hset: store.HistogramSet,
    model_path: Path,
    model_fp: str,
    version_code: int,
    algorithm: str,
    warn_clip: float = clipping.DEFAULT_WARN_CLIP,
) -> dict[str, str]:
    """Validate ``table`` and render its files ({name: text}); raises before anything is written."""
    cache = trt_cache.Cache(version_code, algorithm, table.scales())
    cache_name = f"{model_path.stem}.cache"
    table.meta = {
        "model": {"name": model_path.name, "fingerprint": model_fp},
        "data": {
            "fingerprint": hset.meta.get("data_fingerprint"),
            "source": hset.meta.get("data"),
            "samples": hset.samples,
        },
        "preprocess": (
            {"fingerprint": hset.meta.get("preprocess_fingerprint"), **hset.meta["preprocess"]}
            if hset.meta.get("preprocess")
            else None
        ),
        "cache": {"file": cache_name, "header": cache.header()},
        "uncalibrated": dict(hset.meta.get("uncalibrated") or {}),
        "clip_warnings": clipping.summary(clipping.warnings(table, warn_clip), warn_clip),
    }
    if hset.meta.get("tensor_selection", "all") != "all":  # --tensors all: scales.json as before
        table.meta["tensor_selection"] = hset.meta["tensor_selection"]
        table.meta["skipped"] = dict(hset.meta.get("skipped") or {})
    check_table(table)  # nothing is published unless every value is usable
    return {
        "scales": (SCALES, table.dumps()),
        "cache": (cache_name, cache.text()),
        "tensors_data": (f"{model_path.stem}.tensors.json", ort_tensors.dumps(table.amax())),
    }


def write_scales(tx: Transaction, staged: dict, directory: Path) -> dict[str, Path]:
    """Add a method's scales.json, TensorRT cache and TensorsData to ``tx`` in ``directory``."""
    return {kind: tx.write_text(directory / name, text) for kind, (name, text) in staged.items()}


def _histograms(
    tx,
    model_path,
    proto,
    model_fp,
    data,
    histograms,
    run_batch,
    preprocess,
    recollect,
    force,
    device,
    progress,
    on_source,
    feed: FeedOptions,
    run: dict,
):
    """(histogram set, why it was reused or None, the Collection or None, whether it is new)."""
    if histograms is not None:
        hset = store.load(histograms)
        check_fingerprint(hset.meta.get("model_fingerprint"), model_fp, f"histograms {histograms}", force)
        store.check_names(hset, tensor_names(proto), f"histograms {histograms}")
        return hset, f"stored histograms {histograms}", None, False
    specs = input_specs(proto, feed.batch_axes)
    pre = preprocess or Preprocess()
    source = open_source(data, specs, pre)
    if on_source:
        on_source(source)
    hist_path = tx.directory / HISTOGRAMS
    # The file fingerprint is computed once, in a thread, while the data streams through the model.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="calibkit-fingerprint") as pool:
        fingerprint = pool.submit(source.fingerprint)
        rehashable = getattr(source, "rehashable", False) or getattr(source, "hashes_files", False)
        if hist_path.is_file() and not recollect and (rehashable or fingerprint.result() is not None):
            try:
                old = store.load(hist_path)
            except CalibkitError:
                old = None
            same_feed = old is not None and all(
                old.meta.get(k, d) == v for (k, v), d in zip(feed.meta().items(), ({}, True, None))
            )
            if (
                same_feed
                and old.meta.get("tensor_selection", "all") == run["tensors"]
                and old.meta.get("model_fingerprint") == model_fp
                and old.meta.get("preprocess_fingerprint") == preprocess_fingerprint(source)
            ):
                if old.meta.get("data_fingerprint") == _data_fingerprint(
                    source, specs, run_batch, feed, fingerprint.result()
                ):
                    return (
                        old,
                        f"{hist_path} (model, data and preprocessing fingerprints match; --recollect to redo)",
                        None,
                        False,
                    )
        if run["workers"] and hasattr(source, "workers"):
            source.workers = run["workers"]
        if run["ray"] is not None and run["devices"] is None:
            raise CalibkitError(
                f"--ray {run['ray']}: calibrate uses Ray only to run the --devices shards; give --devices too"
            )
        if run["devices"] is not None and (run["devices"] != [0] or run["ray"] is not None):
            from calibkit.collect.sharded import collect_sharded

            if device == "cpu":
                raise CalibkitError("--devices shards the data over GPUs; it cannot be combined with --device cpu")
            collection = collect_sharded(
                str(model_path),
                data,
                pre,
                source,
                feed,
                run_batch,
                run["devices"],
                run["workers"],
                ray=run["ray"],
                selection=run["tensors"],
                gpu_memory=run["gpu_memory"],
            )
        else:
            collection = collect(
                proto,
                source,
                run_batch,
                device=device,
                progress=progress,
                model_name=model_path.name,
                specs=specs,
                feed=feed,
                external_dir=str(model_path.parent) if has_external(proto) else None,
                hash_stream=not getattr(source, "hashes_files", False),
                tensors=run["tensors"],
                gpu_memory=run["gpu_memory"],
            )
        data_fp = fingerprint.result()
    stats = collection.stats
    applied = applied_preprocess(source)
    hset = store.HistogramSet(
        collection.tensors,
        {
            "model_name": model_path.name,
            "model_fingerprint": model_fp,
            "data_fingerprint": data_fp or "streamed:" + stats.streamed_fingerprint(),
            "data": source.description,
            "preprocess": applied.to_dict() if applied is not None else None,
            "preprocess_fingerprint": preprocess_fingerprint(source),
            "samples": stats.samples,
            "dropped_samples": stats.dropped,
            **feed.meta(),
            "samples_limited": stats.limited,
            "uncalibrated": collection.uncalibrated,
            **({"tensor_selection": run["tensors"], "skipped": collection.skipped} if run["tensors"] != "all" else {}),
        },
    )
    return hset, None, collection, True
