"""What an export prints and writes for people: the artifact table and report.md."""
from __future__ import annotations

import json
from typing import Any, List

from lipt_export.export.precision.int8 import report_lines
from lipt_export.manifest import Manifest
from lipt_export.report import format_table
from lipt_export.runtime.trt import engine_runtime_label

ARTIFACT_HEADER = ("artifact", "precision", "nodes", "size", "rel-L2", "PSNR dB", "lint")
ENGINE_HEADER = ("engine", "runtime", "targets", "build s", "compute layers", "fp32 / fp16 / int8", "parity")


def _fmt_db(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def summary_rows(manifest: Manifest) -> List[List[str]]:
    rows = []
    for a in manifest.artifacts:
        par = a.get("parity")
        par = par if isinstance(par, dict) else {}  # an engine built ahead of time: "pending: ..."
        lint = a.get("lint")
        rows.append([a.path, a.precision, str(a.get("nodes", "-")), f"{a.bytes / 1e6:.2f} MB",
                     "-" if not par else f"{par['rel_l2']:.1e}", _fmt_db(par.get("psnr_db")),
                     lint.get("status", "-") if isinstance(lint, dict) else "-"])
    return rows


def flag_lines(manifest: Manifest) -> List[str]:
    """One line per flagged artifact (shipped, but far from the eager model)."""
    return [f"FLAGGED {a.path}: {a.get('flag')}" for a in manifest.artifacts if a.get("flag")]


def engine_rows(manifest: Manifest) -> List[List[str]]:
    rows = []
    for e in manifest.select("tensorrt"):
        audit = e.get("precision_audit") or {}
        sh = audit.get("shares") or {}
        par = e.get("parity")
        parity = par.split(":", 1)[0] if isinstance(par, str) else f"{par.get('psnr_db', 0):.1f} dB"
        rows.append([e.path, engine_runtime_label(e),
                     ",".join(e.get("compute_capabilities") or []), f"{e.get('build_s', 0):.1f}",
                     str(audit.get("compute_layers", "-")),
                     " / ".join(f"{100 * sh.get(k, 0):.0f}%" for k in ("fp32", "fp16", "int8")), parity])
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
    for a in d["artifacts"]:
        if a.get("parity_vs_train_graph"):
            t = a["parity_vs_train_graph"]
            lines += [f"{a['path']} vs the eager *training* graph (before reparameterization): rel-L2 "
                      f"{t['rel_l2']:.1e}, max |err| {t['max_abs']:.1e}, PSNR {_fmt_db(t['psnr_db'])} dB", ""]
    sizes = {tuple(map(tuple, a["parity"]["sizes"])) for a in d["artifacts"] if isinstance(a.get("parity"), dict)}
    if sizes:
        lines += [f"Parity input sizes (LR HxW): {', '.join(f'{h}x{w}' for h, w in sorted(sizes)[0])}", ""]
    for a in d["artifacts"]:
        if a.get("fp16_islands"):
            lines += [f"### FP32 islands in {a['path']}", "",
                      format_table(("node", "op", "observed max |x|"),
                                   [[i["node"], i["op"], f"{i['max_abs']:.3g}"] for i in a["fp16_islands"]],
                                   markdown=True), ""]
        if a.get("int8"):
            lines += report_lines(a)
        if isinstance(a.get("lint"), dict) and a["lint"].get("findings"):
            lines += [f"### Lint findings for {a['path']}", "",
                      format_table(("severity", "node", "reason"),
                                   [[f["severity"], f["node"], f["reason"]] for f in a["lint"]["findings"]],
                                   markdown=True), ""]
    lines += ["## Stage timings", "",
              format_table(("stage", "seconds"), [[k, f"{v:.2f}"] for k, v in ex.get("timings_s", {}).items()],
                           markdown=True), ""]
    return "\n".join(lines)
