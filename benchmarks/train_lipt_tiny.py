"""Train LIPT-tiny x2 for a few CPU minutes: a small real checkpoint for parity/precision work.

Patches are cut from the shared calibration images (Urban100 001-009; 010 is held out for evaluation),
LR made by bicubic downscaling (the project's MATLAB-style ``lipt_export.validation.imresize``
bicubic). L1 loss on the 0..255 scale and Adam, as the official train.py; a few minutes of CPU training is
of course far from the paper's 1000 epochs on DF2K, so the PSNR printed at the end is only an honest
"better than bicubic or not" figure on one held-out crop.

    .venv/bin/python benchmarks/train_lipt_tiny.py --minutes 5 --out benchmarks/results/lipt_tiny_x2.pt

Writes the training-form checkpoint ``{'model_state_dict': ..., 'meta': {...}}`` and a JSON summary next
to it (``<out>.json``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers.shared: where ../shared is

from lipt_export.models.lipt import build_lipt, count_parameters  # noqa: E402
from lipt_export.models.lipt.nvsm import NVSMAttention  # noqa: E402
from lipt_export.models.reparam import reparameterize_model  # noqa: E402
from helpers.shared import shared_dir  # noqa: E402
from lipt_export.images import list_images  # noqa: E402
from lipt_export.validation.imresize import imresize  # noqa: E402


def downscale(hr: np.ndarray, scale: int) -> tuple[np.ndarray, str]:
    """HWC uint8 -> HWC float32 0..255 (uint8-rounded), bicubic /scale, as SR benchmarks make LR images."""
    return np.asarray(imresize(hr, 1.0 / scale), dtype=np.float32), "lipt_export imresize (MATLAB bicubic)"


def upscale_bicubic(lr: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic baseline, with the same resizer family as the LR."""
    img = np.clip(lr.round(), 0, 255).astype(np.uint8)
    return np.asarray(imresize(img, float(scale)), dtype=np.float32)


def psnr_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """PSNR on the BT.601 Y channel, 0..255 inputs, ``border`` px cropped (the usual SR protocol)."""
    def y(img):
        img = np.clip(np.round(img), 0, 255) / 255.0
        return 16.0 + 65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]
    d = (y(sr) - y(hr))[border:-border, border:-border]
    return 10 * math.log10(255.0 ** 2 / float(np.mean(d ** 2)))


def psnr_rgb(sr: np.ndarray, hr: np.ndarray) -> float:
    d = np.clip(np.round(sr), 0, 255) - hr
    return 10 * math.log10(255.0 ** 2 / float(np.mean(d ** 2)))


def load_pairs(paths, scale):
    from PIL import Image

    pairs, resizer = [], ""
    for p in paths:
        with Image.open(p) as im:
            hr = np.asarray(im.convert("RGB"))
        hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
        lr, resizer = downscale(np.ascontiguousarray(hr), scale)
        pairs.append((torch.from_numpy(lr).permute(2, 0, 1).contiguous(),
                      torch.from_numpy(hr.astype(np.float32)).permute(2, 0, 1).contiguous()))
    return pairs, resizer


def random_batch(pairs, batch, lr_patch, scale, gen):
    lrs, hrs = [], []
    for _ in range(batch):
        lr, hr = pairs[int(torch.randint(len(pairs), (1,), generator=gen))]
        y = int(torch.randint(lr.shape[1] - lr_patch + 1, (1,), generator=gen))
        x = int(torch.randint(lr.shape[2] - lr_patch + 1, (1,), generator=gen))
        a = lr[:, y:y + lr_patch, x:x + lr_patch]
        b = hr[:, y * scale:(y + lr_patch) * scale, x * scale:(x + lr_patch) * scale]
        k = int(torch.randint(8, (1,), generator=gen))  # dihedral augmentation
        if k & 1:
            a, b = a.flip(-1), b.flip(-1)
        if k & 2:
            a, b = a.flip(-2), b.flip(-2)
        if k & 4:
            a, b = a.transpose(-1, -2), b.transpose(-1, -2)
        lrs.append(a)
        hrs.append(b)
    return torch.stack(lrs), torch.stack(hrs)


@torch.no_grad()
def max_attention_logit(model, x) -> float:
    """Largest |q.q^T| in any unit-0 attention on ``x`` (FP16 overflows above 65504)."""
    worst = [0.0]

    def hook(mod, inp, out):
        qs = torch.split(out, mod_ref[mod].split, dim=1)
        for q in qs:
            q = q[:, : q.shape[1] // 2]
            worst[0] = max(worst[0], float(q.pow(2).sum(1).max()))  # |q_i|^2 bounds |q_i.q_j|

    mod_ref, handles = {}, []
    for m in model.modules():
        if isinstance(m, NVSMAttention) and m.calc_attn:
            mod_ref[m.project_inp] = m
            handles.append(m.project_inp.register_forward_hook(hook))
    model(x)
    for h in handles:
        h.remove()
    return worst[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--out", default="benchmarks/results/lipt_tiny_x2.pt")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr-patch", type=int, default=32, help="LR patch size (HR = 2x)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    scale = 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root = shared_dir()
    folder = root / "datasets" / "calib_urban100_001-010" if root else None
    if folder is None or not folder.is_dir():
        sys.exit("train_lipt_tiny: error: ../shared/datasets/calib_urban100_001-010 not found "
                 "(set LIPT_EXPORT_SHARED to the shared folder)")
    paths = list_images(folder)
    train_pairs, resizer = load_pairs(paths[:-1], scale)
    (val_pair,), _ = load_pairs(paths[-1:], scale)
    val_lr_full, val_hr_full = val_pair
    # held-out crop: 128x128 LR from the centre of the last image
    cy, cx = val_lr_full.shape[1] // 2 - 64, val_lr_full.shape[2] // 2 - 64
    val_lr = val_lr_full[:, cy:cy + 128, cx:cx + 128]
    val_hr = val_hr_full[:, 2 * cy:2 * cy + 256, 2 * cx:2 * cx + 256]

    model = build_lipt("tiny", scale)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60.0
    from tqdm import tqdm

    t0, step, losses = time.perf_counter(), 0, []
    bar = tqdm(total=int(budget), unit="s", file=sys.stderr, desc="train LIPT-tiny x2", mininterval=5)
    while time.perf_counter() - t0 < budget:
        frac = (time.perf_counter() - t0) / budget
        for group in opt.param_groups:  # cosine decay over the time budget
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        lr, hr = random_batch(train_pairs, args.batch, args.lr_patch, scale, gen)
        loss = F.l1_loss(model(lr), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 10 == 0:
            bar.n = int(min(budget, time.perf_counter() - t0))
            bar.set_postfix(step=step, l1=f"{np.mean(losses[-20:]):.2f}")
    bar.close()
    train_s = time.perf_counter() - t0

    model.eval()
    deploy = reparameterize_model(model)
    with torch.no_grad():
        sr_train = model(val_lr[None])[0].permute(1, 2, 0).numpy()
        sr = deploy(val_lr[None])[0].permute(1, 2, 0).numpy()
        logit = max_attention_logit(deploy, val_lr[None])
    hr_np = val_hr.permute(1, 2, 0).numpy()
    bic = upscale_bicubic(val_lr.permute(1, 2, 0).numpy(), scale)
    result = {
        "model": "lipt-tiny-x2", "steps": step, "train_seconds": round(train_s, 1), "batch": args.batch,
        "lr_patch": args.lr_patch, "threads": args.threads, "lr_resizer": resizer,
        "train_images": [p.name for p in paths[:-1]], "heldout": f"{paths[-1].name} centre 256x256 HR crop",
        "final_l1_255": round(float(np.mean(losses[-50:])), 3),
        "psnr_y_model_db": round(psnr_y(sr, hr_np, scale), 3),
        "psnr_y_bicubic_db": round(psnr_y(bic, hr_np, scale), 3),
        "psnr_rgb_model_db": round(psnr_rgb(sr, hr_np), 3),
        "psnr_rgb_bicubic_db": round(psnr_rgb(bic, hr_np), 3),
        "deploy_vs_train_max_abs": float(np.abs(sr - sr_train).max()),
        "max_attention_logit_heldout": round(logit, 1),
        "params_deploy": count_parameters(deploy),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save({"model_state_dict": model.state_dict(), "meta": {k: v for k, v in result.items()
                                                                 if not isinstance(v, list)}}, tmp)
    tmp.replace(out)
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(result, indent=2) + "\n")
    width = max(map(len, result))
    print("\n".join(f"{k:<{width}}  {v}" for k, v in result.items()))
    print(f"checkpoint: {out}")


if __name__ == "__main__":
    main()
