"""What to build: options of ``calibkit build`` parsed and checked without TensorRT."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibkit.data import Preprocess
from calibkit.errors import CalibkitError

Shape = tuple[int, ...]
_DIMS = re.compile(r"^\d+(x\d+)*$")


@dataclass
class BuildSpec:
    onnx: Path
    engine: Path
    int8: bool = False
    cache: Path | None = None
    ranges: Path | None = None  # TensorRT 10: calibkit's amaxes as per-tensor dynamic ranges (no calibrator)
    qdq: Path | None = None
    fp16: bool = False
    shapes: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)
    keep_fp16: list[str] = field(default_factory=list)
    timing_cache: Path | None = None
    data: Any = None  # TensorRT 10 calibrates from this when no --cache is given
    preprocess: Preprocess | None = None
    calibrator: str = "entropy2"
    batch_size: int = 8
    write_cache: Path | None = None
    workspace_mb: int | None = None
    batch_axes: dict[str, int | None] = field(default_factory=dict)  # how --data is cut, as for calibrate
    rebatch: bool = True
    max_samples: int | None = None

    def check(self) -> BuildSpec:
        if not self.onnx.is_file():
            raise CalibkitError(f"model {self.onnx} not found")
        self._check_outputs()
        if self.qdq is not None:
            if self.int8 or self.cache:
                raise CalibkitError("--qdq already carries the INT8 scales; drop --int8/--cache")
            if not self.qdq.is_file():
                raise CalibkitError(f"Q/DQ model {self.qdq} not found; write it with `calibkit export-qdq`")
            self._check_qdq()
        if self.ranges is not None and (not self.int8 or self.cache is not None or self.data is not None):
            raise CalibkitError("--ranges gives the INT8 ranges itself: use it with --int8, without --cache or --data")
        if self.ranges is not None and not self.ranges.is_file():
            raise CalibkitError(f"--ranges {self.ranges} not found; pass calibkit's scales.json or <model>.cache")
        if self.cache is not None and not self.int8:
            raise CalibkitError("--cache is the INT8 calibration cache; add --int8")
        if self.int8 and self.cache is None and self.data is None and self.ranges is None:
            raise CalibkitError("--int8 needs --cache (calibkit's scales) or --data (TensorRT 10 calibrates)")
        if self.cache is not None and self.calibrator == "legacy":
            raise CalibkitError(
                "--calibrator legacy cannot take --cache: TensorRT's legacy cache also carries the quantile and regression cutoff, "
                "which calibkit's cache does not; use --calibrator entropy2 (it applies any calibkit method's scales) or give --data"
            )
        if self.cache is not None and not self.cache.is_file():
            raise CalibkitError(f"cache {self.cache} not found; write it with `calibkit calibrate`")
        if self.data is None and (self.batch_axes or not self.rebatch or self.max_samples is not None):
            raise CalibkitError(
                "--batch-axis/--no-rebatch/--max-samples say how --data is cut for TensorRT's calibration; give --data or drop them"
            )
        if self.keep_fp16 and not (self.int8 or self.qdq):
            raise CalibkitError("--keep-fp16/--from-report keep layers out of INT8; add --int8 or --qdq")
        self._check_shapes()
        self._check_cache_and_layers()
        return self

    def _check_cache_and_layers(self) -> None:
        """The cache parses and belongs to this model; every kept layer is one of its nodes."""
        from calibkit.artifacts import trt_cache
        from calibkit.graph.model import load

        model = load(self.onnx)
        if self.cache is not None:
            c = trt_cache.read(self.cache)
            known = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
            foreign = [t for t in c.scales if t not in known]
            if not c.scales or len(foreign) == len(c.scales):
                raise CalibkitError(
                    f"cache {self.cache} has no tensor of {self.onnx.name} (e.g. {next(iter(c.scales), '-')!r}); calibrate this model"
                )
            self._check_cache_set()
            from calibkit.qdq.fusion import qdq_inputs

            needed = [t for t in qdq_inputs(model) if t not in {i.name for i in model.graph.input}]
            missing = [t for t in needed if t not in c.scales]
            if missing:
                raise CalibkitError(
                    f"cache {self.cache} has no scale for {len(missing)} of the {len(needed)} tensors the quantized layers of "
                    f"{self.onnx.name} read (e.g. {missing[0]!r}): TensorRT would run those layers without INT8 ranges; "
                    "calibrate this model (any --tensors mode keeps them)"
                )
        if self.keep_fp16:
            nodes = [n.name for n in model.graph.node]
            for name in self.keep_fp16:
                if name not in nodes:
                    raise CalibkitError(
                        f"--keep-fp16/--from-report: the model has no node named {name!r} (nodes: {', '.join(nodes[:8])}{', ...' if len(nodes) > 8 else ''})"
                    )

    def _check_cache_set(self) -> None:
        """A cache published by calibkit sits in a set whose scales.json records the model it was
        calibrated for: another model (same graph, other weights) is refused, as export-qdq and
        validate refuse its scales."""
        import contextlib

        from calibkit.artifacts import scales as scales_io
        from calibkit.graph.model import fingerprint_file
        from calibkit.outputs.sets import _manifests, read_manifest

        home = Path(self.cache).resolve().parent
        for mf in _manifests(home):
            doc = read_manifest(mf)
            files = (doc or {}).get("files") or {}
            if Path(self.cache).name not in files or "scales.json" not in files:
                continue
            fp = None
            with contextlib.suppress(CalibkitError, OSError, AttributeError, TypeError):
                fp = (scales_io.read(home / "scales.json").meta.get("model") or {}).get("fingerprint")
            if fp and fp != fingerprint_file(self.onnx):
                raise CalibkitError(
                    f"cache {self.cache} was calibrated for another model (its set's scales.json records model "
                    f"fingerprint {fp[:19]}..., {self.onnx.name} is {fingerprint_file(self.onnx)[:19]}...): calibrate this model"
                )

    def _check_outputs(self) -> None:
        """No file the build writes (engine, timing cache, layer files, the TensorRT 11 models
        it prepares) is one of its inputs."""
        stem = self.engine.with_suffix("")
        outputs = {
            "--engine": self.engine,
            "--timing-cache": self.timing_cache,
            "the layer report": self.layer_info,
            "the layer summary": self.layer_report,
            "the prepared Q/DQ model": Path(f"{stem}.trt11.qdq.onnx"),
            "the prepared FP16 model": Path(f"{stem}.trt11.fp16.onnx"),
        }
        inputs = {"MODEL": self.onnx, "--cache": self.cache, "--qdq": self.qdq, "--ranges": self.ranges}
        if isinstance(self.data, (str, Path)):
            inputs["--data"] = Path(self.data)
        seen: dict[Path, str] = {}
        for what, path in outputs.items():
            if path is None:
                continue
            p = Path(path).resolve()
            for opt, src in inputs.items():
                if src is not None and Path(src).resolve() == p:
                    raise CalibkitError(
                        f"{what} {path} is also {opt} of this build; write the engine elsewhere (--engine DIR/NAME.plan)"
                    )
            if p in seen:
                raise CalibkitError(
                    f"{what} and {seen[p]} are the same file {path}; pick another --engine/--timing-cache"
                )
            seen[p] = what

    def _check_qdq(self) -> None:
        """The --qdq file is an ONNX model with Q/DQ nodes (not random bytes, not the float model)."""
        from calibkit.qdq.files import read_light

        m = read_light(self.qdq)
        if not any(n.op_type == "QuantizeLinear" for n in m.graph.node):
            raise CalibkitError(
                f"--qdq {self.qdq} has no QuantizeLinear node: it is not a Q/DQ model; write one with `calibkit export-qdq`"
            )
        base = read_light(self.onnx)
        inits = {i.name for i in base.graph.initializer}
        want = sorted(i.name for i in base.graph.input if i.name not in inits)
        got = sorted(i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer})
        if want != got or [o.name for o in base.graph.output] != [o.name for o in m.graph.output]:
            raise CalibkitError(
                f"--qdq {self.qdq} is not a Q/DQ export of {self.onnx.name}: its inputs/outputs "
                f"({', '.join(got)} -> {', '.join(o.name for o in m.graph.output)}) differ from the model's "
                f"({', '.join(want)} -> {', '.join(o.name for o in base.graph.output)}); export it from this model"
            )

    def _check_shapes(self) -> None:
        from calibkit.graph.model import input_specs, load

        specs = {s.name: s for s in input_specs(load(self.onnx), self.batch_axes)}  # also checks --batch-axis
        for name, (lo, _, _) in self.shapes.items():
            if name not in specs:
                raise CalibkitError(f"--shapes names {name!r} but the model's inputs are: {', '.join(specs)}")
            want = specs[name].shape
            if len(lo) != len(want) or any(isinstance(d, int) and d != g for d, g in zip(want, lo)):
                raise CalibkitError(
                    f"--shapes {name}: {'x'.join(map(str, lo))} does not fit the model's {specs[name].describe()}"
                )

    def check_shapes_given(self) -> None:
        """Every dynamic input of the model has --shapes (trtexec would build batch 1 with only a warning)."""
        from calibkit.graph.model import input_specs, load

        for spec in input_specs(load(self.onnx), self.batch_axes):
            if spec.name not in self.shapes and any(not isinstance(d, int) for d in spec.shape):
                dims = "x".join(str(d) if isinstance(d, int) else "?" for d in spec.shape)
                raise CalibkitError(
                    f"input {spec.name!r} has dynamic shape {dims}; pass --shapes {spec.name}:MIN/OPT/MAX"
                )

    @property
    def layer_info(self) -> Path:
        """TensorRT's layer information JSON (IEngineInspector / trtexec --exportLayerInfo)."""
        return self.engine.with_name(f"{self.engine.stem}.layers.json")

    @property
    def layer_report(self) -> Path:
        """calibkit's reading of it: precision per ONNX node, fallbacks, kept layers."""
        return self.engine.with_name(f"{self.engine.stem}.layer-report.json")

    @property
    def quantized(self) -> bool:
        return self.int8 or self.qdq is not None


def _dims(text: str, option: str) -> Shape:
    if not _DIMS.match(text):
        raise CalibkitError(f"{option}: shape {text!r} is not like 1x3x224x224")
    return tuple(int(d) for d in text.split("x"))


def parse_shapes(text: str | None) -> dict[str, tuple[Shape, Shape, Shape]]:
    """``x:1x3x8x8/4x3x8x8/8x3x8x8[,y:...]`` (or one shape for min=opt=max)."""
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
    if not text:
        return shapes
    for item in text.split(","):
        name, sep, dims = item.strip().rpartition(":")
        if not sep or not name:
            raise CalibkitError(
                f"--shapes {item!r}: expected input:MIN/OPT/MAX, e.g. x:1x3x224x224/8x3x224x224/32x3x224x224"
            )
        parts = [_dims(p, "--shapes") for p in dims.split("/")]
        if len(parts) == 1:
            parts *= 3
        if len(parts) != 3 or len({len(p) for p in parts}) != 1:
            raise CalibkitError(f"--shapes {item!r}: give MIN/OPT/MAX of the same rank")
        lo, opt, hi = parts
        if name in shapes:
            raise CalibkitError(f"--shapes names input {name!r} twice; give each input once")
        if any(d < 1 for p in parts for d in p):
            raise CalibkitError(
                f"--shapes {item!r}: every dim must be >= 1 (a zero batch builds an engine that runs nothing)"
            )
        if any(not (a <= b <= c) for a, b, c in zip(lo, opt, hi)):
            raise CalibkitError(f"--shapes {item!r}: each dim needs MIN <= OPT <= MAX")
        shapes[name] = (lo, opt, hi)
    return shapes


def read_layers(path: str | Path) -> list[str]:
    """Layers to keep in FP16: from a validate results.json (``candidates[i].fp16_fallback.nodes``,
    all candidates), or a text file of layer names, one per line (``#`` comments)."""
    p = Path(path)
    if not p.is_file():
        raise CalibkitError(f"--from-report {p} not found")
    text = p.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CalibkitError(f"--from-report {p}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting deeper than Python's stack
            why = "nested too deeply" if isinstance(exc, RecursionError) else "a number too long to read"
            raise CalibkitError(
                f"--from-report {p}: not a results.json calibkit can read ({why}); pass a calibkit results.json or a text file of layer names"
            ) from None
        cands = doc.get("candidates") if isinstance(doc, dict) else None
        if not isinstance(cands, list):
            raise CalibkitError(
                f"--from-report {p}: no 'candidates' list; pass a calibkit results.json or a text file of layer names"
            )
        names: list[str] = []
        for c in cands:
            fb = (c.get("fp16_fallback") if isinstance(c, dict) else None) or {}
            nodes = fb.get("nodes") if isinstance(fb, dict) else None
            if nodes is not None and not (isinstance(nodes, list) and all(isinstance(n, str) for n in nodes)):
                raise CalibkitError(f"--from-report {p}: fp16_fallback.nodes must be a list of node names")
            names += [n for n in nodes or [] if n not in names]
        return names
    if "\ufffd" in text or "\x00" in text:
        raise CalibkitError(
            f"--from-report {p} is not text; pass a calibkit results.json or a text file of layer names"
        )
    names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise CalibkitError(f"--from-report {p} lists no layer names")
    return names
