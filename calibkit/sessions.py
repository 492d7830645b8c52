"""ONNX Runtime session loading and execution-provider choice.

CUDA is used only when it is really usable: ORT built with it *and* a driver with at least
one device. On CPU-only machines onnxruntime-gpu is asked for CPU only, so it prints nothing.
"""

from __future__ import annotations

import ctypes
import functools

import onnx

from calibkit.errors import CalibkitError

PROVIDER_CHOICES = ("auto", "cpu", "cuda")


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver or a GPU)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def providers_for(device: str = "auto") -> list[str]:
    import onnxruntime as ort

    if device not in PROVIDER_CHOICES:
        raise CalibkitError(f"--device {device!r} is not one of {', '.join(PROVIDER_CHOICES)}")
    cuda_built = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cpu" or (device == "auto" and not (cuda_built and cuda_device_count() > 0)):
        return ["CPUExecutionProvider"]
    if device == "cuda" and not cuda_built:
        raise CalibkitError("--device cuda: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu")
    if device == "cuda" and cuda_device_count() == 0:
        raise CalibkitError("--device cuda: no CUDA device is visible (driver missing or no GPU); use --device cpu")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def session(
    model: onnx.ModelProto | bytes,
    device: str = "auto",
    threads: int = 0,
    where: str = "model",
    external_dir: str | None = None,
    exact_qdq: bool = False,
    gpu_mem_limit: int | None = None,
):
    """An InferenceSession on the chosen provider, quiet unless something is wrong.

    ``gpu_mem_limit``: bytes the CUDA provider's memory arena may hold (``--gpu-memory``); the
    arena then grows only by what each allocation asks for.

    ``exact_qdq``: run a Q/DQ model as written (dequantize -> float kernels), the INT8 numerics
    TensorRT computes. ORT's extended optimizations would fuse DQ -> Conv -> Q into integer
    kernels (QLinearConv, QGemm) whose u8s8 products saturate on x86 CPUs without VNNI
    (measured on an AVX2 EPYC: max error 0.76 instead of 0.14 on a small conv net).

    ``external_dir``: the folder the model's external-data references are relative to (the
    model was loaded with its weights left on disk; only the small graph is serialised)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if exact_qdq:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if external_dir is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_dir))
    data = model if isinstance(model, bytes) else model.SerializeToString()
    providers: list = providers_for(device)
    if "CUDAExecutionProvider" in providers:
        # Reproducible GPU numerics: a fixed (heuristic) cuDNN algorithm per shape instead of
        # a timed search whose winner can change from run to run, and deterministic kernels.
        opts.use_deterministic_compute = True
        cuda_opts = {"cudnn_conv_algo_search": "HEURISTIC"}
        if gpu_mem_limit is not None:
            cuda_opts.update(gpu_mem_limit=str(int(gpu_mem_limit)), arena_extend_strategy="kSameAsRequested")
        providers = [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers)
    except CalibkitError:
        raise
    except Exception as exc:
        said = ort_message(exc)
        if gpu_mem_limit is not None and ("Available memory of" in said or "Failed to allocate memory" in said):
            raise CalibkitError(
                f"--gpu-memory {gpu_mem_limit / 2**30:.3g} GiB is too little for ONNX Runtime to load {where} on the GPU "
                f"({said}); raise --gpu-memory"
            ) from None
        raise CalibkitError(f"ONNX Runtime cannot load {where}: {said}") from None


def ort_message(exc: BaseException) -> str:
    """ONNX Runtime's error on one line, whole: its status prefix and C++ source locations
    dropped, the reason (\"Unsupported model IR version: 12, max supported IR version: 11\") kept."""
    import re

    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    # "/onnxruntime_src/.../x.h:46 void ns::F(args) reason": a return type may precede the function
    text = re.sub(
        r"\s*/\S*onnxruntime\S*\.(?:cc|h|cpp):\d+ (?:[\w:<>*&]+ ){0,3}?[^ ()]*\([^)]*\)(?: const)?", " ", text
    )
    return re.sub(r"\s+", " ", text).strip() or type(exc).__name__


@functools.lru_cache(maxsize=1)
def int8_saturates() -> bool:
    """An x86 CPU without VNNI (Linux /proc/cpuinfo): ORT's real INT8 kernels multiply u8 x s8
    pairs into int16 there, which saturates (ONNX Runtime's quantization docs)."""
    try:
        flags = open("/proc/cpuinfo", encoding="ascii", errors="replace").read()
    except OSError:
        return False
    return " avx2" in flags and "vnni" not in flags
