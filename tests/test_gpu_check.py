"""benchmarks/gpu_check.py's CPU dry run: the same code path the GPU host runs (golden outputs made on the CPU in FP32,
each precision against them, NaN/Inf, latency, TensorRT imports), at a small size."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                          "--families", "lipt,smsr", "--latency-hw", "24x24", "--runs", "2", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(out.read_text())
    by = {(r["family"], r["precision"]): r for r in report["results"]}
    assert by[("lipt", "fp32")]["psnr_vs_golden_db"] > 100  # FP32 on the CPU is the golden itself
    assert 20 < by[("lipt", "bf16")]["psnr_vs_golden_db"] < 100 and by[("lipt", "bf16")]["finite"]
    assert by[("lipt", "fp32")]["latency_ms"] > 0 and by[("lipt", "fp32")]["latency_lr"] == [24, 24]
    assert set(report["environment"]["tensorrt"]) == {"tensorrt", "tensorrt_rtx"}
    assert "31 ms" in res.stdout and "PSNR vs golden" in res.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cuda"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--device cpu" in bad.stderr  # no CUDA here: says so
