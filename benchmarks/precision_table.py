"""The precision-ladder table of docs/precision.md from an export (all precisions, engines) and its `eval --json`:
per precision the Set5 PSNR-Y and its delta against the fp32 file, the held-out drop the export measured, the nodes
kept in float, export seconds, file and engine size, the engine's targets and audit shares. Prints a Markdown table
and writes JSON.

    lipt-export --model smsr --scale 2 --weights ../shared/checkpoints/smsr/SMSR_x2_official.pt \\
        --fp16 --bf16 --int8 --fp8 --calib ../shared/datasets/calib_urban100_001-010 --backend tensorrt-rtx --out /tmp/ladder
    lipt-export eval --model smsr --scale 2 --weights ../shared/checkpoints/smsr/SMSR_x2_official.pt \\
        --dataset ../shared/datasets/Set5 --artifact /tmp/ladder/smsr-base-x2 --json /tmp/ladder/eval.json
    python benchmarks/precision_table.py /tmp/ladder/smsr-base-x2 /tmp/ladder/eval.json --json ladder.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipt_export.catalog import PRECISIONS  # noqa: E402
from lipt_export.manifest import read_manifest  # noqa: E402
from lipt_export.report import format_table  # noqa: E402


def rows_for(export_dir: Path, eval_json: Path):
    man = read_manifest(export_dir)
    ev = json.loads(eval_json.read_text())
    set5 = {Path(r["path"]).name: r for r in ev["results"] if r.get("path")}
    fp32 = set5.get("model.onnx", {}).get("psnr_y")
    timings = man.export.get("timings_s", {})
    out = []
    for precision in PRECISIONS:
        onnx = man.select("onnx", precision)
        if not onnx:
            continue
        entry = onnx[0]
        engine = (man.select("tensorrt", precision) or [None])[0]
        score = set5.get(entry.path, {})
        record = entry.bf16 or entry.qdq()
        held = record.psnr_drop_db if record is not None else None
        in_float = (len(record.islands) if entry.bf16 else len(record.nodes_in_float)) if record is not None else \
            (len(entry.fp16.islands) if entry.fp16 else 0)
        audit = engine.engine.audit if engine is not None else None
        out.append({
            "precision": precision, "file": entry.path, "opset": entry.opset, "set5_psnr_y": score.get("psnr_y"),
            "delta_vs_fp32_db": None if fp32 is None or score.get("psnr_y") is None else
            round(score["psnr_y"] - fp32, 4),
            "heldout_drop_db": held, "nodes_kept_float": in_float,
            "export_s": timings.get(precision) if precision != "fp32" else timings.get("onnx"),
            "onnx_mb": round(entry.bytes / 1e6, 2),
            "engine_mb": round(engine.bytes / 1e6, 2) if engine is not None else None,
            "engine_targets": list(engine.engine.compute_capabilities) if engine is not None else [],
            "engine_skipped": [cc for cc, _ in engine.engine.skipped] if engine is not None else [],
            "audit_share": round(audit.shares.get(precision, 0.0), 4) if audit else None,
            "audit_fp32_layers": (len(audit.fp32_layers) if not isinstance(audit.fp32_layers, str) else "all")
            if audit else None})
    return man, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir")
    ap.add_argument("eval_json")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    man, rows = rows_for(Path(args.export_dir), Path(args.eval_json))
    fmt = lambda v, f="{:.4f}": "-" if v is None else f.format(v)  # noqa: E731
    table = [[r["precision"], str(r["opset"]), fmt(r["set5_psnr_y"]), fmt(r["delta_vs_fp32_db"], "{:+.4f}"),
              fmt(r["heldout_drop_db"]), str(r["nodes_kept_float"]), fmt(r["export_s"], "{:.0f}"),
              f"{r['onnx_mb']:.2f}", fmt(r["engine_mb"], "{:.1f}"), ",".join(r["engine_targets"]) or "-",
              fmt(None if r["audit_share"] is None else 100 * r["audit_share"], "{:.0f}%")] for r in rows]
    print(format_table(("precision", "opset", "Set5 PSNR-Y", "Δ vs fp32 dB", "held-out drop dB", "kept float",
                        "export s", "ONNX MB", "engine MB", "engine targets", "audit share"), table, markdown=True))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": man.model.label, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
