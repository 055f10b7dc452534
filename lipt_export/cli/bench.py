"""`lipt-export bench EXPORT_DIR`: latency vs accuracy vs arithmetic throughput of every way to run an export
(the work is :func:`lipt_export.export.benchmark.run_benchmark`)."""
from __future__ import annotations

from pathlib import Path

import click

from lipt_export.cli.options import check_output_file, parse_runtimes, parse_size
from lipt_export.errors import UsageError
from lipt_export.fileio import save_atomic, write_json_atomic
from lipt_export.report import format_table

HEADER = ("row", "median ms", "p90 ms", "IQR ms", "x eager train", "x eager deploy", "PSNR", "GMAC", "GFLOP/s",
          "% of peak", "peak")
PEAK_ISAS = ("native", "avx512", "avx2")  # lipt_export.validation.peak.ISA_CAPS (torch-free here)


def _cells(r, accuracy: str):
    if "median_ms" not in r:
        return [r["row"], "-", "-", "-", "-", "-", "-", "-", "-", "-", f"not run: {r.get('skipped', '')}"]
    acc = r.get("psnr_y") if accuracy == "dataset" else r.get("psnr_vs_golden")
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    return [r["row"], f(r["median_ms"], ".1f"), f(r["p90_ms"], ".1f"), f(r.get("iqr_ms"), ".1f"),
            f(r.get("speedup_vs_train"), ".2f"), f(r.get("speedup_vs_deploy"), ".2f"), f(acc, ".2f"),
            f(r.get("gmac"), ".2f"), f(r.get("gflops"), ".1f"), f(r.get("pct_peak"), ".1f"),
            r.get("peak", "-") if r.get("pct_peak") is not None else f"{r.get('peak', 'fp32')} not measured"]


def peak_table(peaks) -> str:
    """The measured peaks: precision, ISA, instruction, one thread, all threads (or why not measured)."""
    rows = []
    for p in peaks["peaks"].values():
        if p["not_measured"]:
            rows.append([p["precision"], p["isa"] or "-", "-", "-", "-", f"not measured: {p['not_measured']}"])
        else:
            rows.append([p["precision"], p["isa"], f"{p['single_thread']:.0f}", f"{p['all_threads']:.0f}",
                         f"{p['all_threads_wall']:.0f}", f"{p['unit']} ({p['instruction']})"])
    n = next(iter(peaks["peaks"].values()))["threads"]
    return format_table(("peak", "ISA", "1 thread", f"{n} threads", f"{n} threads, wall clock", "unit (kernel)"),
                        rows)


def write_plot(result, path: Path) -> None:
    """PSNR vs latency, one labelled marker per row (matplotlib, the `plot` extra)."""
    try:
        import matplotlib  # deferred: optional, only for --plot
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install -c constraints.txt -e '.[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: as above

    key = "psnr_y" if result["accuracy"] == "dataset" else "psnr_vs_golden"
    pts = [r for r in result["rows"] if "median_ms" in r and r.get(key) is not None]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    markers = "osD^v<>phX*"
    for i, r in enumerate(pts):  # a legend, not labels on the points: many rows sit on top of each other
        ax.scatter(r["median_ms"], r[key], marker=markers[i % len(markers)], s=50, label=r["row"])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel("median latency (ms, lower is better)")
    ax.set_ylabel("PSNR-Y on the dataset (dB)" if key == "psnr_y" else "output PSNR vs eager (dB)")
    ax.set_title(f"{result['model']}: {result['protocol']} protocol, inputs {result['inputs']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


@click.command("bench")
@click.argument("export_dir", type=click.Path())
@click.option("--dataset", default=None, type=click.Path(), help="HR/ (+ LR_bicubic/X{scale}/) folder: PSNR-Y/SSIM-Y "
              "on it [default: output PSNR against the export's golden eager outputs].")
@click.option("--sizes", default="64x64", show_default=True, help="LR HxW list for --protocol fixed, e.g. 64x64,37x51.")
@click.option("--protocol", default="fixed", show_default=True, type=click.Choice(["fixed", "paper", "ntire"]),
              help="paper: LR for a 1280x720 output; ntire: the dataset's whole images, mean per image.")
@click.option("--runtimes", default=None, help="Comma-separated CPU runtimes for the ONNX artifacts: onnxruntime, "
              "openvino-f32, openvino-bf16 [default: every one installed].")
@click.option("--threads", default=None, type=int, help="Threads for every runtime (default: all cores, at most 8).")
@click.option("--runs", default=5, show_default=True, type=int, help="Interleaved timed rounds per input.")
@click.option("--warmup", default=1, show_default=True, type=int)
@click.option("--peak-isa", default="native", show_default=True, type=click.Choice(PEAK_ISAS),
              help="Measure the peaks as a CPU with at most this ISA would (avx2: no AVX-512, AMX or AVX-VNNI).")
@click.option("--no-eager", is_flag=True, help="Skip the eager and naive-ONNX rows (they rebuild the model).")
@click.option("--plot", "plot_path", default=None, type=click.Path(), help="Write a PSNR vs latency PNG here.")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Also write the results here.")
def command(export_dir, dataset, sizes, protocol, runtimes, threads, runs, warmup, peak_isa, no_eager, plot_path,
            json_path):
    """Time and score every way to run EXPORT_DIR: eager train/deploy graphs, a naive ONNX of the train graph,
    every ONNX artifact on every runtime; GMAC and achieved GFLOP/s against this machine's measured peak."""
    if runs < 1:
        raise UsageError("--runs must be at least 1")
    for path, flag in ((json_path, "--json"), (plot_path, "--plot")):
        if path:
            check_output_file(path, flag)
    # deferred: torch and the model code load only once the cheap checks passed
    from lipt_export.export.benchmark import run_benchmark

    result = run_benchmark(export_dir, runtimes=parse_runtimes(runtimes),
                           protocol=protocol, sizes=[parse_size(s) for s in sizes.split(",") if s.strip()],
                           dataset=dataset, threads=threads, runs=runs, warmup=warmup, eager=not no_eager,
                           peak_isa=peak_isa)
    acc = "PSNR-Y on the dataset" if result["accuracy"] == "dataset" else "output PSNR vs the golden eager outputs"
    click.echo(f"{result['model']}, protocol {protocol}, LR {result['inputs']}, {result['threads']} threads, median "
               f"of at least {runs} interleaved quiet rounds; PSNR = {acc}")
    for size, t in zip(result["inputs"], result["timing"]):
        click.echo(f"timing {size[0]}x{size[1]}: {t['summary']}")
    click.echo(format_table(HEADER, [_cells(r, result["accuracy"]) for r in result["rows"]]))
    peaks = result["peaks"]
    click.echo(f"peaks of {peaks['cpu'] or 'this CPU'}: {peaks['method']}")
    click.echo(f"peaks not measured: {peaks['not_measured']}" if peaks["not_measured"] else peak_table(peaks))
    if json_path:
        write_json_atomic(json_path, result)
        click.echo(f"results: {json_path}")
    if plot_path:
        write_plot(result, Path(plot_path))
        click.echo(f"plot: {plot_path}")
