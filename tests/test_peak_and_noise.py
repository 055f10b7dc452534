"""Numbers a user can trust (issue 26, part 1): the per-ISA peak kernels (native and forced AVX2), rounds timed
while other processes load the machine are dropped, and a runtime choice timed on a busy machine is recorded as
provisional (manifest round trip) and said by `upscale`."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from helpers.cli import run_cli
from lipt_export.manifest import RuntimeChoice, read_manifest
from lipt_export.validation import peak
from lipt_export.validation.bench import interleaved_timing
from lipt_export.validation.machine_load import (CpuSample, NoiseLimits, noise_between, noisy_reason,
                                                 parse_proc_stat, parse_self_stat)

MODEL, FLAGS = peak.cpu_flags()
X86_AVX2 = {"avx2", "fma"} <= set(FLAGS)
needs_kernels = pytest.mark.skipif(not X86_AVX2 or peak.find_compiler() is None,
                                   reason="needs an x86-64 CPU with AVX2+FMA and a C compiler")
GHZ_BOUND = 6.0  # no CPU core runs faster: a measured peak above lanes x 2 FMA units x 2 x 6 GHz is wrong


def _bound(lanes: int, threads: int) -> float:
    return lanes * 2 * 2 * GHZ_BOUND * threads


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPT_EXPORT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@needs_kernels
def test_peak_kernels_native_and_forced_avx2(kernel_cache):
    native = peak.measure_peaks(threads=1, isa_cap="native", seconds=0.01, repeats=2)
    avx2 = peak.measure_peaks(threads=1, isa_cap="avx2", seconds=0.01, repeats=2)
    assert list(kernel_cache.glob("peak/peak-*.so")), "compiled into the cache folder"
    wide = "avx512f" in FLAGS
    fp32 = native.peaks["fp32"]
    assert fp32.isa == ("AVX-512F" if wide else "AVX2+FMA") and fp32.not_measured is None
    assert 0 < fp32.value < _bound(16 if wide else 8, 1)
    assert native.peaks["int8"].value > 0
    # capped at AVX2: the Zen 3 path (ymm FMA; vpmaddubsw + vpmaddwd + vpaddd), nothing newer
    assert avx2.peaks["fp32"].isa == "AVX2+FMA" and 0 < avx2.value("fp32") < _bound(8, 1)
    assert avx2.peaks["int8"].isa == "AVX2" and "vpmaddubsw" in avx2.peaks["int8"].instruction
    assert avx2.value("int8") > 0
    for p in ("bf16", "amx-int8", "amx-bf16"):
        assert avx2.peaks[p].value is None and "capped at avx2" in avx2.peaks[p].not_measured
    if "amx_int8" in FLAGS:  # its own row: measured, or why not (the kernel refused the tile state)
        amx = native.peaks["amx-int8"]
        assert (amx.value or 0) > 0 or "arch_prctl" in amx.not_measured
    # the JSON form names ISA, kernel and method
    d = native.to_dict()
    assert d["peaks"]["fp32"]["instruction"].startswith("vfmadd231ps") and "register-only" in d["method"]


def test_without_a_compiler_the_peak_is_not_measured_and_says_why(kernel_cache, monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CC", raising=False)
    lib, why = peak.build_library(("avx2", "fma"))
    assert lib is None and "no C compiler" in why
    if X86_AVX2:
        report = peak.measure_peaks(threads=1, seconds=0.0101, repeats=1)  # not a cached call
        assert report.not_measured and "no C compiler" in report.not_measured and report.value("fp32") is None
        assert report.lines() == [f"peaks not measured: {report.not_measured}"]


def test_kernel_choice_follows_the_flags():
    zen3 = peak.choose_kernels(("avx2", "fma", "sse4_2"))
    assert (zen3["fp32"].symbol, zen3["int8"].symbol) == ("fp32_avx2", "int8_avx2") and "bf16" not in zen3
    spr = peak.choose_kernels(("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                               "amx_tile", "amx_int8", "amx_bf16"))
    assert [spr[p].symbol for p in peak.PRECISIONS] == ["fp32_avx512", "int8_vnni512", "bf16_avx512", "amx_int8",
                                                        "amx_bf16"]
    assert peak.choose_kernels(peak.capped_flags(("avx2", "fma", "avx_vnni"), "avx2"))["int8"].symbol == "int8_avx2"


def test_noise_rule_on_parsed_samples():
    stat = "cpu  1000 0 200 5000 10 0 5 40 0 0\ncpu0 ..."
    assert parse_proc_stat(stat) == (1205, 40, 6255)
    assert parse_self_stat("4242 (python (x)) R 1 2 3 4 5 6 7 8 9 10 77 23 0 0") == 100
    a = CpuSample(0.0, busy=1000, steal=0, total=2000, own=0)
    quiet = noise_between(a, CpuSample(1.0, busy=1190, steal=0, total=2200, own=180), clk_tck=100)
    assert quiet.other_cores == pytest.approx(0.1) and noisy_reason(quiet) is None
    busy = noise_between(a, CpuSample(1.0, busy=1200, steal=0, total=2200, own=100), clk_tck=100)
    assert busy.other_cores == pytest.approx(1.0) and "other processes used 1.00 cores" in noisy_reason(busy)
    stolen = noise_between(a, CpuSample(1.0, busy=1100, steal=30, total=2200, own=100), clk_tck=100)
    assert "CPU steal 15.0 %" in noisy_reason(stolen, NoiseLimits(max_steal_pct=5))


class _Work:
    """A runner-shaped numpy workload (~20 ms): timing is what is tested here, not a runtime."""

    def __init__(self, name):
        self.name, self.a = name, np.random.default_rng(0).random((300, 300), np.float32)

    def infer(self, x):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.02:
            self.a @ self.a


def _busy_process():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def test_rounds_under_real_load_are_dropped_and_said():
    busy = {}

    def progress(_):  # rounds 0-1 as the machine is; a busy process (one whole core) during rounds 2-3
        busy["n"] = busy.get("n", 0) + 1
        if busy["n"] == 3:
            busy["proc"] = _busy_process()
            time.sleep(0.3)
        elif busy["n"] == 5:
            busy["proc"].kill()
            busy["proc"].wait()

    try:
        rep = interleaved_timing([_Work("a"), _Work("b")], None, runs=4, warmup=1, pause_s=0.05, progress=progress,
                                 max_rounds=8, spread_pct=100)
    finally:
        if "proc" in busy and busy["proc"].poll() is None:
            busy["proc"].kill()
    dropped = {int(d.split(":")[0].split()[1]) for d in rep.dropped}
    assert {2, 3} <= dropped  # warm-up is round "1" of progress: timed rounds 2 and 3 ran beside the busy process
    assert all("other processes used" in d for d in rep.dropped if int(d.split(":")[0].split()[1]) in (2, 3))
    assert rep.rounds >= 4 and rep.load_before is not None and rep.steal_pct is not None
    line = rep.summary()
    assert "load average" in line and "steal" in line and "dropped (other processes used" in line and "IQR" in line
    assert set(rep.stats["a"]) >= {"median_ms", "min_ms", "max_ms", "iqr_ms", "rounds"}


def test_provisional_runtime_choice_round_trips():
    base = {"runtime": "openvino-f32", "machine": "m", "budget": "b", "measured": "2026-12-07T08:00:00+00:00",
            "candidates": [{"runtime": "onnxruntime", "rel_l2": 0.0, "within_budget": True, "median_ms": 2.0}],
            "left_out": [], "probe_hw": [32, 32]}
    old = RuntimeChoice.from_dict(base, "test")
    assert old.provisional is None and old.to_dict() == base and old.provisional_warning("fp32") is None
    d = dict(base, provisional="timed on a busy machine twice (first: 1 of 9 rounds quiet, then 0 of 9; ...)")
    rec = RuntimeChoice.from_dict(d, "test")
    assert rec.provisional == d["provisional"] and rec.to_dict() == d
    assert RuntimeChoice.from_dict(json.loads(json.dumps(rec.to_dict())), "test") == rec


def test_a_choice_timed_under_load_is_provisional_and_upscale_says_so(tiny_export, tmp_path):
    from lipt_export.runtime.openvino import installed_cpu_runtimes
    from lipt_export.validation.runtime_choice import measure_runtime_choice

    if len(installed_cpu_runtimes()) < 2:
        pytest.skip("one CPU runtime: nothing to time against")
    procs = [_busy_process()]
    try:
        time.sleep(0.3)
        x = np.random.default_rng(0).random((1, 3, 16, 16), np.float32)
        choice = measure_runtime_choice(tiny_export / "model.onnx", "fp32", [x], threads=1, runs=2, scale=2)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert choice.provisional and choice.provisional.startswith("timed on a busy machine twice (first: ")
    quiet = re.search(r"first: (\d+) of \d+ rounds quiet, then (\d+) of", choice.provisional)
    assert quiet and int(quiet.group(1)) < 2 and int(quiet.group(2)) < 2  # fewer quiet rounds than runs, twice
    # written into a copy of the export, read back typed, and said by upscale in one warning line
    d = tmp_path / "busy"
    shutil.copytree(tiny_export, d)
    man = json.loads((d / "manifest.json").read_text())
    man["runtime_choice"]["fp32"]["provisional"] = choice.provisional
    (d / "manifest.json").write_text(json.dumps(man))
    assert read_manifest(d).runtime_choice["fp32"].provisional == choice.provisional
    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(1).random((20, 24, 3)) * 255).astype(np.uint8)).save(src)
    res = run_cli("upscale", d, src, tmp_path / "out.png", "-q")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if "provisional" in ln]
    assert len(lines) == 1 and "timed on a busy machine twice" in lines[0] and "--runtime" in lines[0], res.stderr
    plain = run_cli("upscale", tiny_export, src, tmp_path / "out2.png", "-q")
    assert "provisional" not in plain.stderr or json.loads((tiny_export / "manifest.json").read_text())[
        "runtime_choice"]["fp32"].get("provisional")


def test_each_bench_row_is_compared_with_the_peak_its_runtime_uses():
    measured = {"fp32": peak.Peak("fp32", "AVX2+FMA", "vfmadd231ps ymm", 100.0, 190.0, 2),
                "int8": peak.Peak("int8", "AVX2", "vpmaddubsw", 200.0, 400.0, 2, "GOP/s"),
                "amx-int8": peak.Peak("amx-int8", not_measured="no AMX")}
    zen3 = peak.PeakReport("AMD EPYC", "native", "test", measured)
    assert peak.peak_for_row(zen3, "fp32", "onnxruntime") == (190.0, "fp32 AVX2+FMA")
    assert peak.peak_for_row(zen3, "fp16", "onnxruntime") == (190.0, "fp32 AVX2+FMA")
    assert peak.peak_for_row(zen3, "int8", "onnxruntime") == (400.0, "int8 AVX2")
    assert peak.peak_for_row(zen3, "fp32", "openvino-bf16") == (190.0, "fp32 AVX2+FMA")  # no bf16 here
    amx = peak.PeakReport("Xeon", "native", "test", dict(measured, **{
        "amx-int8": peak.Peak("amx-int8", "AMX-INT8", "tdpbusd", 2000.0, 4000.0, 2, "GOP/s")}))
    assert peak.peak_for_row(amx, "int8", "onnxruntime") == (4000.0, "AMX-INT8")
    none = peak.PeakReport("?", "native", "test", not_measured="no C compiler")
    assert peak.peak_for_row(none, "fp32", "onnxruntime") == (None, "fp32")
