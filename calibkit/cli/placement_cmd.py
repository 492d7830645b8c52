"""CLI: ``calibkit placement``: where Q/DQ goes (and why), and the lint of TensorRT-unfusable patterns."""

from __future__ import annotations

import click

from calibkit.cli.options import user_errors


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--scales",
    type=click.Path(dir_okay=False),
    help="scales.json: export MODEL with --placement (to a temporary file) and lint the result.",
)
@click.option(
    "--placement",
    type=click.Choice(["trt", "trt-min", "trt-fused"]),
    default="trt",
    show_default=True,
    help="Placement whose decisions are listed for a float MODEL (default: export-qdq's default).",
)
@click.option("--precision", type=click.Choice(["int8", "fp8"]), default="int8", show_default=True)
@click.option("--strict", is_flag=True, help="Exit 3 when the lint finds anything.")
@click.option("--force", is_flag=True, help="Accept scales whose model fingerprint differs.")
@user_errors
def placement(model, scales, placement, precision, strict, force) -> None:
    """List per node whether it is quantized and by which rule, and lint the Q/DQ model.

    MODEL may be a Q/DQ model (from calibkit, ModelOpt, ORT...: linted as it is) or a float
    model (the placement's decisions; with --scales, also exported and linted). Lints:
    Q/DQ between a Conv and its residual Add, Concat inputs with different scales, Q/DQ on
    tensors computed from constants, nonzero zero points, one-layer INT8 islands. Exits 3
    with --strict when any is found.
    """
    from pathlib import Path

    from calibkit.cli.progress import out, table
    from calibkit.outputs.scratch import scratch
    from calibkit.qdq import lint as qdq_lint
    from calibkit.qdq.files import read_light

    light = read_light(model)
    has_qdq_early = any(n.op_type in qdq_lint.QDQ_OPS for n in light.graph.node)
    if strict and not has_qdq_early and not scales:  # --strict must lint something to pass
        raise click.UsageError(
            f"--strict: {model} is a float model and no --scales were given, so there is nothing to lint; "
            "give --scales (the Q/DQ export is linted) or pass a Q/DQ model"
        )
    has_qdq = any(n.op_type in qdq_lint.QDQ_OPS for n in light.graph.node)
    if has_qdq and scales:
        raise click.UsageError(f"{model} is already a Q/DQ model; --scales applies to a float model")
    rows = []
    linted = None
    if has_qdq:
        for name, op, q in qdq_lint.placement_rows(light):
            rows.append([name, op, "yes" if q else "no", "found in the model"])
        linted = light
    else:
        rows = _decisions(light, placement, precision)
        if scales:
            from calibkit.artifacts import scales as scales_io
            from calibkit.graph.model import check_fingerprint, fingerprint_file
            from calibkit.qdq.export import export_qdq

            table_ = scales_io.read(scales)
            check_fingerprint(
                table_.meta.get("model", {}).get("fingerprint"), fingerprint_file(model), f"scales {scales}", force
            )
            with scratch("placement") as tmp:
                path = export_qdq(
                    model, table_.amax(), Path(tmp) / "m.qdq.onnx", placement=placement, precision=precision
                )
                import onnx

                linted = onnx.load(str(path), format="protobuf", load_external_data=False)
    quantized = sum(1 for r in rows if r[2] == "yes")
    title = f"placement of {Path(model).name}" + ("" if has_qdq else f" (--placement {placement})")
    out.print(table(title, ["node", "op", "quantized", "rule"], rows))
    out.print(f"{quantized} of {len(rows)} listed nodes quantized")
    if linted is None:
        out.print("lint: give --scales (or a Q/DQ model) to lint the exported graph")
        return
    found = qdq_lint.lint(linted)
    out.print(f"activation Q nodes: {qdq_lint.activation_q_count(linted)}")
    counts = {k: sum(1 for f in found if f.lint == k) for k in qdq_lint.LINTS}
    out.print("lint: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for f in found:
        out.print(f"  {f.lint}: {f.message}")
    if strict and found:
        raise SystemExit(3)


def _decisions(model, placement: str, precision: str = "int8") -> list[list[str]]:
    from calibkit.graph import forms
    from calibkit.qdq import rules
    from calibkit.qdq.export import name_nodes
    from calibkit.qdq.placement import COMPUTE_OPS, FUSED_NEIGHBOURS

    prepared, _ = forms.fold_constant_nodes(model)
    named = name_nodes(prepared)
    if placement == "trt-fused":
        listed = set(COMPUTE_OPS) | set(FUSED_NEIGHBOURS) | {"Concat"}
        return [
            [d.node, d.op_type, "yes" if d.quantized else "no", d.rule + (f" ({d.why})" if d.why else "")]
            for d in rules.decide(named, precision=precision).values()
            if d.op_type in listed
        ]
    return [[n.name, n.op_type, "yes", "compute-input"] for n in named.graph.node if n.op_type in COMPUTE_OPS]
