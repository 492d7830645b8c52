"""Candidates behind one interface: ort-fp32 (reference), ort-int8, ort-int8-cpu, ort-fp8
(FP8 E4M3FN Q/DQ, TensorRT placement, run as dequantize -> FP32 kernels), ort-fp16, and trt-int8 / trt-fp16 (calibkit.trt; listed unavailable, with the reason, without TensorRT).

A candidate runs a feed and returns the model outputs in the reference's order; INT8
candidates also expose, for per-layer analysis, every quantized activation before and
after its Q/DQ pair.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from calibkit.errors import CalibkitError
from calibkit.graph.model import with_outputs
from calibkit.qdq.export import activation_qdq, export_qdq
from calibkit.sessions import int8_saturates, session
from calibkit.validate import fp16
from calibkit.validate.candidate import Candidate, Unavailable  # noqa: F401  (Unavailable: raised by backends)

BACKENDS = ("ort-fp32", "ort-int8", "ort-int8-cpu", "ort-fp8", "ort-fp16", "trt-int8", "trt-fp16")
QDQ_BACKENDS = {"ort-int8": ("trt", "int8"), "ort-int8-cpu": ("ort", "int8"), "ort-fp8": ("trt", "fp8")}


def trt_reason() -> str:
    from calibkit.trt import unavailable_reason

    return unavailable_reason() or "TensorRT is available"


def _ort_note(sess) -> str:
    return ", ".join(p.replace("ExecutionProvider", "") for p in sess.get_providers())


def reference(model: onnx.ModelProto, device: str, layer_tensors: list[str] | None = None) -> tuple[Candidate, object]:
    outs = [o.name for o in model.graph.output]
    sess = session(model, device=device, where="the FP32 model")
    layer_sess = (
        session(with_outputs(model, layer_tensors), device=device, where="the FP32 model") if layer_tensors else None
    )
    return Candidate("ort-fp32", "ort-fp32", sess, outs, note=_ort_note(sess)), layer_sess


def make(
    backend: str,
    model: onnx.ModelProto,
    output_names: list[str],
    workdir: Path,
    amax: dict[str, float] | None,
    device: str = "auto",
    method: str | None = None,
    exclude_nodes: str | None = None,
    emulate_fp16: bool = False,
    placement: str | None = None,
) -> Candidate:
    """Build one candidate; raises Unavailable with the reason when it cannot run here.
    ``placement``: the Q/DQ placement of an ort-int8/ort-fp8 candidate (default ``trt``)."""
    if backend not in BACKENDS:
        raise CalibkitError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend.startswith("trt-"):
        from calibkit.trt.backend import candidate

        return candidate(backend, model, output_names, workdir, amax, method)
    if backend == "ort-fp32":
        c, _ = reference(model, device)
        return c
    if backend in QDQ_BACKENDS:
        if amax is None:
            raise CalibkitError(f"backend {backend} needs scales: pass --scales scales.json (from calibkit calibrate)")
        default, precision = QDQ_BACKENDS[backend]
        placement = placement or default
        tag = f"{method or 'int8'}.{placement}" + ("" if precision == "int8" else f".{precision}")
        path = export_qdq(
            model,
            amax,
            workdir / f"{tag}.qdq.onnx",
            placement=placement,
            exclude_nodes=exclude_nodes,
            precision=precision,
        )
        qdq = onnx.load(str(path))
        layers = activation_qdq(qdq)
        # The Q/DQ model runs on the CPU provider: real INT8 kernels for the "ort" placement,
        # dequantize -> float kernels (exact INT8 numerics) for the TensorRT placement.
        exact = placement != "ort"
        sess = session(qdq, device="cpu", where=f"the Q/DQ model {path.name}", exact_qdq=exact)
        graph_inputs = {i.name for i in qdq.graph.input}
        names = [n for t, (dq, _) in layers.items() for n in (t, dq) if n not in graph_inputs]
        layer_sess = (
            session(with_outputs(qdq, names), device="cpu", where=path.name, exact_qdq=exact) if names else None
        )
        how = (
            f"TensorRT Q/DQ placement ({placement}, {precision.upper()}), dequantize->FP32 kernels on ORT CPU"
            if placement != "ort"
            else "ORT placement, real INT8 kernels on ORT CPU"
            + (" (this CPU has no VNNI: ORT's u8s8 kernels saturate here, unlike TensorRT)" if int8_saturates() else "")
        )
        label = f"{backend} ({method})" if method else backend
        if placement != default:
            label += f" [{placement}]"
        inits = {i.name for i in qdq.graph.initializer}
        quantized = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input and n.input[0] not in inits]
        if not quantized:  # its verdict is FP32's: said in the row's note, not a silent PASS
            how = (
                f"NOTHING IS QUANTIZED ({'--exclude-nodes leaves no' if exclude_nodes else 'no'} activation with a "
                f"Q/DQ pair, {placement} placement): this row runs the FP32 model"
            )
        return Candidate(
            label,
            backend,
            sess,
            output_names,
            note=how,
            method=method,
            layer_sess=layer_sess,
            layers=layers,
            model_path=path,
        )
    # ort-fp16
    if not emulate_fp16:
        try:
            converted = fp16.convert(model)
            sess = session(converted, device=device, where="the FP16 model")
            where = _ort_note(sess)
            note = f"float16 graph on {where}" + (
                " (CPU inserts float32 casts around ops lacking FP16 kernels)" if "CUDA" not in where else ""
            )
            return Candidate("ort-fp16", backend, sess, output_names, note=note)
        except CalibkitError:
            pass
    sess = session(fp16.emulate(model), device="cpu", where="the FP16-emulated model")
    return Candidate(
        "ort-fp16",
        backend,
        sess,
        output_names,
        note="EMULATED: weights and activations rounded through float16, FP32 accumulation",
    )
