"""SMSR x2: can skipping the masked-off work beat the dense artifact on this CPU? (issue 26, part 3)

Prototype: each sparse mask body (SMB) runs as gather-GEMM-scatter on the pixels its spatial mask keeps. Per
layer, in a zero-padded channels-last buffer: the full 3x3 conv only at masked pixels (9 row gathers of C floats
per pixel -> one (P, 9C) x (9C, C) GEMM -> rows written back), and outside the mask only the dense output
channels from the dense input channels (a small dense conv, n_in -> n_out channels). That is the deploy form's
``where(M, relu(conv(F)), [relu(conv(F_dense)); 0])`` evaluated only where each side is needed. Everything
else (head, mask branches, channel attention, collects, tail) runs as in the eager deploy graph.

Rows, interleaved in every round on each Set5 x2 LR image (whole image, batch 1, 2 threads): the eager dense
deploy graph (torch), the sparse prototype (torch), and the dense ONNX artifacts on ONNX Runtime and OpenVINO
f32. Also counted per image: mask density, body MACs dense vs sparse, whole-model MACs dense vs sparse.

    .venv/bin/python benchmarks/smsr_sparse.py --export EXPORT/smsr-base-x2 \
        --weights ../shared/checkpoints/smsr/SMSR_x2_official.pt --lr ../shared/datasets/Set5/LR_bicubic/X2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lipt_export.models  # noqa: E402,F401  (registers the families)
from lipt_export.models.loading import prepare_model  # noqa: E402
from lipt_export.models.registry import get_spec  # noqa: E402
from lipt_export.models.smsr import SMSR, hard_spatial_mask  # noqa: E402
from lipt_export.report import format_table  # noqa: E402
from lipt_export.runtime.loader import checked_artifact, open_export  # noqa: E402
from lipt_export.runtime.openvino import OpenVinoRunner  # noqa: E402
from lipt_export.runtime.ort import OnnxRuntimeRunner  # noqa: E402
from lipt_export.validation.bench import interleaved_stats  # noqa: E402


@contextmanager
def timed(stats: dict, key: str):
    """Adds the block's wall time (ms) to stats['t_' + key] when stats asks for a breakdown."""
    if "t_gemm" not in stats:
        yield
        return
    t0 = time.perf_counter()
    yield
    stats["t_" + key] += (time.perf_counter() - t0) * 1e3


def sparse_body(body, x: torch.Tensor, m: torch.Tensor, stats: dict) -> torch.Tensor:
    """One deploy-form SMB on (1, C, H, W), computing the full conv only at the mask's pixels."""
    _, c, h, w = x.shape
    hp, wp = h + 2, w + 2
    counts = [int(v) for v in body.dense_out.tolist()]
    keep = m[0, 0].flatten() > 0.5
    pix = torch.nonzero(keep).flatten()
    pad_idx = (pix // w + 1) * wp + (pix % w + 1)  # interior pixel -> row of the padded buffer
    taps = torch.stack([pad_idx + dy * wp + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 1).flatten()
    p = int(pix.numel())
    buf = F.pad(x, (1, 1, 1, 1))[0].permute(1, 2, 0).reshape(hp * wp, c).contiguous()
    n_in, outs = c, []
    for i, conv in enumerate(body.body):
        wt = conv.weight
        n_out = counts[i]
        with timed(stats, "other"):
            out = torch.zeros(hp * wp, c)
        if n_out and n_in:  # outside the mask only dense outputs from dense inputs exist
            with timed(stats, "dense_small"):
                prev = buf.view(hp, wp, c)[..., :n_in].permute(2, 0, 1).unsqueeze(0)
                a = F.relu(F.conv2d(prev, wt[:n_out, :n_in]))  # buffer is zero-padded: no conv padding
                out.view(hp, wp, c)[1:-1, 1:-1, :n_out] = a[0].permute(1, 2, 0)
            stats["macs"] += h * w * n_in * n_out * 9
        if p:
            with timed(stats, "gather"):
                cols = buf.index_select(0, taps).view(p, 9 * c)
            with timed(stats, "gemm"):
                wmat = wt.permute(0, 2, 3, 1).reshape(c, 9 * c).t()  # (9C, C), tap-major like the gather
                z = F.relu(cols @ wmat)
            with timed(stats, "scatter"):
                out.index_copy_(0, pad_idx, z)
            stats["macs"] += p * 9 * c * c
        if "t_gemm" in stats:  # the same layer as one dense conv, for comparison
            with timed(stats, "dense_conv"):
                F.relu(F.conv2d(x, wt, padding=1))
        stats["dense_macs"] += h * w * 9 * c * c
        outs.append(out.view(hp, wp, c)[1:-1, 1:-1])
        buf, n_in = out, n_out
    with timed(stats, "other"):
        cat = torch.cat(outs, 2).reshape(h * w, -1)
        y = torch.addmm(body.collect.bias, cat, body.collect.weight.flatten(1).t())
    stats["pixels"] += h * w
    stats["masked"] += p
    with timed(stats, "other"):
        return y.t().reshape(1, c, h, w).contiguous()


BREAKDOWN = ("gather", "gemm", "scatter", "dense_small", "other", "dense_conv")


def sparse_forward(model: SMSR, x: torch.Tensor, stats: dict) -> torch.Tensor:
    """SMSR.forward (eval, deploy form) with every SMB run by :func:`sparse_body`."""
    h, w = x.shape[2], x.shape[3]
    x0 = model.sub_mean(x)
    feat = model.head(F.pad(x0, (0, w % 2, 0, h % 2), mode="replicate"))
    fea, feats = feat, []
    for smm in model.body:
        m = hard_spatial_mask(smm.spa_mask(fea))
        fea = smm.ca(sparse_body(smm.body, fea, m, stats)) + fea
        feats.append(fea)
    fea = model.collect(torch.cat(feats, 1)) + feat
    sr = model.tail(fea)[:, :, : h * model.scale, : w * model.scale]
    return model.add_mean(sr + F.interpolate(x0, scale_factor=model.scale, mode="bicubic", align_corners=False))


class TorchFn:
    """A runner over a function of a [0, 1] NCHW numpy input (the model's native range is 0..255)."""

    def __init__(self, fn, name: str):
        self.fn, self.name = fn, name

    def infer(self, lr: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (self.fn(torch.from_numpy(lr) * 255.0) / 255.0).numpy()


def model_macs(model: SMSR, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, help="SMSR x2 export folder (its fp32 model.onnx is the dense row)")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--lr", required=True, help="folder of LR images (Set5 LR_bicubic/X2)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "smsr_sparse.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = lambda: " ".join(f"{v:.2f}" for v in os.getloadavg())  # noqa: E731
    print(f"load average {load()}")
    model = prepare_model(get_spec("smsr"), None, 2, args.weights).deploy.eval()
    man = open_export(args.export)
    onnx = checked_artifact(man, next(e for e in man.artifacts if e.format == "onnx" and e.precision == "fp32")).path
    runners = [TorchFn(model, "torch dense (eager deploy)"),
               TorchFn(lambda t: sparse_forward(model, t, {"macs": 0, "dense_macs": 0, "pixels": 0, "masked": 0}),
                       "torch sparse (gather-GEMM-scatter)"),
               OnnxRuntimeRunner(onnx, name="ORT dense model.onnx", threads=args.threads),
               OpenVinoRunner(onnx, "f32", name="OpenVINO-f32 dense model.onnx", threads=args.threads)]
    rows, results, totals = [], [], {r.name: 0.0 for r in runners}
    breakdowns: dict = {}
    for path in sorted(Path(args.lr).glob("*.png")):
        lr = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
                                  .transpose(2, 0, 1)[None] / 255.0)
        st = {"macs": 0, "dense_macs": 0, "pixels": 0, "masked": 0}
        with torch.no_grad():
            xt = torch.from_numpy(lr) * 255.0
            ref = model(xt)
            sp = sparse_forward(model, xt, st)
            total = model_macs(model, xt)
        rel = float((sp - ref).norm() / ref.norm())
        bd = {"macs": 0, "dense_macs": 0, "pixels": 0, "masked": 0}
        bd.update({f"t_{k}": 0.0 for k in BREAKDOWN})
        with torch.no_grad():
            for _ in range(3):  # median of three breakdown passes (not interleaved: an explanation, not a race)
                one = dict(bd)
                sparse_forward(model, xt, one)
                breakdowns.setdefault(path.name, []).append({k: one[f"t_{k}"] for k in BREAKDOWN})
        ref_onnx = runners[2].infer(lr)
        rel_onnx = float(np.linalg.norm(sp.numpy() / 255.0 - ref_onnx) / np.linalg.norm(ref_onnx))
        stats = interleaved_stats(runners, lr, args.runs, warmup=1)
        med = {k: v["median_ms"] for k, v in stats.items()}
        for k in totals:
            totals[k] += med[k]
        density = st["masked"] / st["pixels"]
        saved_body = 1 - st["macs"] / st["dense_macs"]
        saved_total = (st["dense_macs"] - st["macs"]) / total
        results.append({"image": path.name, "hw": list(lr.shape[2:]), "density": density, "body_macs_saved": saved_body,
                        "model_macs_saved": saved_total, "model_gmac": total / 1e9, "rel_l2_vs_eager": rel,
                        "rel_l2_vs_onnx": rel_onnx, "stats": stats})
        rows.append([path.stem, f"{lr.shape[2]}x{lr.shape[3]}", f"{density:.2f}", f"{100 * saved_body:.0f}%",
                     f"{100 * saved_total:.0f}%", f"{rel:.1e}"] + [f"{med[r.name]:.1f}" for r in runners])
    base = totals["ORT dense model.onnx"]
    rows.append(["Set5 sum", "", "", "", "", ""] + [f"{totals[r.name]:.1f}" for r in runners])
    rows.append(["vs ORT dense", "", "", "", "", ""] + [f"{base / totals[r.name]:.2f}x" for r in runners])
    print(format_table(["image", "LR", "mask density", "body MACs skipped", "model MACs skipped",
                        "rel-L2 sparse vs dense"] + [f"{r.name} ms" for r in runners], rows))
    print(f"load average {load()}; median of {args.runs} interleaved rounds per image, {args.threads} threads")
    bd_rows = []
    for name, passes in breakdowns.items():
        med = {k: float(np.median([p[k] for p in passes])) for k in BREAKDOWN}
        res = next(r for r in results if r["image"] == name)
        res["breakdown_ms"] = med
        bd_rows.append([name] + [f"{med[k]:.1f}" for k in BREAKDOWN])
    print("SMB layers only (20 per image), torch, ms: the sparse path's parts vs the same layers as dense convs")
    print(format_table(["image", "gather", "masked GEMM", "scatter", "dense-input conv", "zero/collect",
                        "dense conv (same layers)"], bd_rows))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": results, "totals_ms": totals, "argv": sys.argv[1:]}, indent=2))


if __name__ == "__main__":
    main()
