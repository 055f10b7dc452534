"""Test inputs for parity and calibration-free range checks: deterministic, independent of the working
directory. By default synthetic natural-looking images; crops of real photos when a folder is given."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from lipt_export.images import list_images, read_rgb


def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth, natural-looking HWC image in [0, 1]: upsampled low-frequency noise plus gradients/edges."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, h // 8), max(2, w // 8), generator=g)
    img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = 0.6 * img + 0.25 * (xx + yy)[None, None] / 2 + 0.15 * (torch.sin(xx * 25 + seed) > 0).float()
    return img.clamp(0, 1)[0].permute(1, 2, 0).numpy().astype(np.float32)


def natural_inputs(sizes: Sequence[Tuple[int, int]], image_dir: Optional[str | Path] = None,
                   seed: int = 0, per_size: int = 1) -> List[np.ndarray]:
    """LR-like NCHW inputs in [0, 1], deterministic for a seed: crops of the images in ``image_dir``
    downscaled x2 when a folder is given, else synthetic smooth images (:func:`synthetic_image`)."""
    paths = list_images(image_dir) if image_dir and Path(image_dir).is_dir() else []
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        for j in range(per_size):
            k = i * per_size + j
            if paths:
                from PIL import Image

                img = read_rgb(paths[k % len(paths)])
                H, W = img.shape[:2]
                ch, cw = min(2 * h, H), min(2 * w, W)
                y0, x0 = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
                crop = Image.fromarray(img[y0:y0 + ch, x0:x0 + cw])
                lr = np.asarray(crop.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0
            else:
                lr = synthetic_image(h, w, seed * 1000 + k)
            out.append(np.ascontiguousarray(lr.transpose(2, 0, 1)[None]))
    return out
