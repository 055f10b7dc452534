"""Small real networks and export directories for the serving, tiling, Triton and TensorRT tests.

The export directories are made with the same stage functions as the pipeline (export_onnx, the manifest
helpers), just without a registered model, so these tests stay fast and independent of the model zoo.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lipt_export import manifest as mf
from lipt_export.tiling import TilingPolicy
from lipt_export.export.onnx_export import export_onnx, node_count


class ConvSR(nn.Module):
    """Conv -> ReLU -> Conv -> PixelShuffle plus a bilinear skip: receptive-field radius 2 LR pixels."""

    def __init__(self, scale: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.scale = scale
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 3 * scale * scale, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        self.up = nn.PixelShuffle(scale)

    def forward(self, x):
        skip = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.up(self.c2(torch.relu(self.c1(x)))) + skip


class WindowSR(ConvSR):
    """Pads to a multiple of the window (reflect, like LIPT), mixes each window with its own mean, crops:
    tiling matches whole-image inference only when tiles are aligned to the window grid."""

    window = 8

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        ph, pw = (self.window - h % self.window) % self.window, (self.window - w % self.window) % self.window
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        b, c, hp, wp = x.shape
        win = x.reshape(b, c, hp // self.window, self.window, wp // self.window, self.window)
        x = (win + 0.5 * win.mean(dim=(3, 5), keepdim=True)).reshape(b, c, hp, wp)
        return super().forward(x)[:, :, : h * self.scale, : w * self.scale]


def make_export(root: Path, model: Optional[nn.Module] = None, *, scale: int = 2, multiple_of: int = 1,
                tile_required: bool = False, recommended_tile: int = 64, overlap: int = 16,
                name: str = "toy-x2") -> Path:
    """An export directory (model.onnx + manifest.json) for ``model`` as the pipeline would write it."""
    model = (model or ConvSR(scale)).eval()
    out = Path(root) / name
    out.mkdir(parents=True)
    info = export_onnx(model, out / "model.onnx", sample_hw=(32, 32))
    man = mf.Manifest.new(
        model=mf.ModelInfo("toy", "conv", scale, {"description": "test network",
                                                  "weights": {"source": "demo-init", "seed": 0}}),
        io=mf.IOContract(scale, TilingPolicy.for_model(multiple_of, recommended_tile, tile_required, overlap=overlap)),
        export={"opset": info.opset, "exporter": info.exporter,
                "simplifier": {"tool": "none", "nodes_before": 0, "nodes_after": 0}})
    mf.embed_onnx_metadata(out / "model.onnx", man)
    man = man.with_artifacts([mf.ArtifactEntry.for_file(out / "model.onnx", out, fmt="onnx", precision="fp32",
                                                        nodes=node_count(out / "model.onnx"))])
    mf.write_manifest(out, man)
    return out


def add_fp16_io_artifact(export_dir: Path) -> Path:
    """Append model.fp16.onnx with float16 inputs/outputs (onnxconverter-common, keep_io_types=False)."""
    import onnx
    from onnxconverter_common import float16

    src = onnx.load(str(export_dir / "model.onnx"))
    converted = float16.convert_float_to_float16(src, keep_io_types=False)
    path = export_dir / "model.fp16.onnx"
    onnx.save(converted, str(path))
    man = mf.read_manifest(export_dir)
    man = man.with_artifacts([mf.ArtifactEntry.for_file(path, export_dir, fmt="onnx", precision="fp16",
                                                        fp16_io="float16")])
    mf.write_manifest(export_dir, man)
    return path


class CyclicSR(WindowSR):
    """WindowSR after a cyclic roll of the padded map (LIPT's unmasked shifted windows): pixels near one border
    depend on the opposite border."""

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        ph, pw = (self.window - h % self.window) % self.window, (self.window - w % self.window) % self.window
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        x = x + 0.5 * torch.roll(x, shifts=(-(self.window // 2), -(self.window // 2)), dims=(2, 3))
        return super().forward(x)[:, :, : h * self.scale, : w * self.scale]
