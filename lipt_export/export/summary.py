"""What an export prints and writes for people: the artifact table and report.md."""
from __future__ import annotations

import json
from typing import Any, List

from lipt_export.export.precision import bf16 as bf16_report
from lipt_export.export.precision.int8 import report_lines
from lipt_export.catalog import PRECISIONS
from lipt_export.manifest import Manifest
from lipt_export.report import format_table

ARTIFACT_HEADER = ("artifact", "precision", "nodes", "size", "rel-L2", "PSNR dB", "lint")
ENGINE_HEADER = ("engine", "runtime", "targets", "build s", "compute layers", " / ".join(PRECISIONS), "parity")


def _fmt_db(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def summary_rows(manifest: Manifest) -> List[List[str]]:
    rows = []
    for a in manifest.artifacts:
        par = a.parity  # None for an engine built ahead of time ("pending")
        rows.append([a.path, a.precision, str(a.nodes if a.nodes is not None else "-"), f"{a.bytes / 1e6:.2f} MB",
                     "-" if par is None else f"{par.rel_l2:.1e}", _fmt_db(par.psnr_db if par else None),
                     a.lint.status if a.lint else "-"])
    return rows


def flag_lines(manifest: Manifest) -> List[str]:
    """One line per flagged artifact (shipped, but far from the eager model)."""
    return [f"FLAGGED {a.path}: {a.flag}" for a in manifest.artifacts if a.flag]


def engine_rows(manifest: Manifest) -> List[List[str]]:
    rows = []
    for e in manifest.select("tensorrt"):
        engine = e.engine
        shares = engine.audit.shares if engine.audit else {}
        parity = e.parity_pending.split(":", 1)[0] if e.parity_pending else f"{e.parity.psnr_db:.1f} dB"
        rows.append([e.path, engine.label, ",".join(engine.compute_capabilities), f"{engine.build_s:.1f}",
                     str(engine.audit.compute_layers if engine.audit else "-"),
                     " / ".join(f"{100 * shares.get(k, 0):.0f}%" for k in PRECISIONS), parity])
    return rows


def render_report(manifest: Manifest) -> str:
    d = manifest.to_dict()
    m, io, ex = d["model"], d["io"], d["export"]
    lines = [f"# {m['name']}-{m['variant']} x{m['scale']}", "",
             f"Exported {d['created']} with {ex['exporter']}, opset {ex['opset']}, simplifier "
             f"{ex['simplifier']['tool']} ({ex['simplifier']['nodes_before']} -> "
             f"{ex['simplifier']['nodes_after']} nodes).", "",
             f"Weights: {json.dumps(m['weights'])}", "",
             f"I/O: `{io['input']['name']}` float32 NCHW RGB [0,1] -> `{io['output']['name']}` x{io['scale']}, "
             f"any H/W (padded internally to a multiple of {io['size']['multiple_of']}).", ""]
    if m.get("reparam_rel_l2_fp64") is not None:
        lines += [f"Reparameterization (train vs deploy graph, float64): rel-L2 {m['reparam_rel_l2_fp64']:.2e}", ""]
    lines += ["## Artifacts (parity vs eager deploy graph, worst case over inputs)", "",
              format_table(ARTIFACT_HEADER, summary_rows(manifest), markdown=True), ""]
    lines += [f"**{line}**" for line in flag_lines(manifest)] + ([""] if flag_lines(manifest) else [])
    if manifest.select("tensorrt"):
        lines += ["## Engines (precision audit: compute layers by precision)", "",
                  format_table(ENGINE_HEADER, engine_rows(manifest), markdown=True), ""]
    for a in manifest.artifacts:
        t = a.parity_vs_train_graph
        if t is not None:
            lines += [f"{a.path} vs the eager *training* graph (before reparameterization): rel-L2 "
                      f"{t.rel_l2:.1e}, max |err| {t.max_abs:.1e}, PSNR {_fmt_db(t.psnr_db)} dB", ""]
    sizes = {tuple(map(tuple, a.parity.sizes)) for a in manifest.artifacts if a.parity is not None}
    if sizes:
        lines += [f"Parity input sizes (LR HxW): {', '.join(f'{h}x{w}' for h, w in sorted(sizes)[0])}", ""]
    for a in manifest.artifacts:
        if a.fp16 and a.fp16.islands:
            lines += [f"### FP32 islands in {a.path}", "",
                      format_table(("node", "op", "observed max |x|"),
                                   [[i.node, i.op, f"{i.max_abs:.3g}"] for i in a.fp16.islands], markdown=True), ""]
        if a.bf16:
            lines += bf16_report.report_lines(a.path, a.bf16.report)
        for qdq in (a.int8, a.fp8):
            if qdq:
                lines += report_lines(a.path, qdq.report, qdq.key)
        if a.lint and a.lint.findings:
            lines += [f"### Lint findings for {a.path}", "",
                      format_table(("severity", "node", "reason"),
                                   [[f.severity, f.node, f.reason] for f in a.lint.findings], markdown=True), ""]
    lines += ["## Stage timings", "",
              format_table(("stage", "seconds"), [[k, f"{v:.2f}"] for k, v in ex.get("timings_s", {}).items()],
                           markdown=True), ""]
    return "\n".join(lines)
