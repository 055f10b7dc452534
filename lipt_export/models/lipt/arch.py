"""LIPT hyper-parameters from a state dict and from the official ``config/*.yml`` (see models.arch)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping

from lipt_export.errors import ModelError
from lipt_export.models.arch import count_indices, read_yaml
from lipt_export.models.lipt.model import LIPTConfig


def read_lipt_arch(sd: Mapping[str, Any]) -> Dict[str, Any]:
    """Blocks, units per block (n_share), channels, HRM expansion and scale, from either form's keys.
    The window size is not stored anywhere in the weights. Returns only what the keys show (nothing for a
    checkpoint of another family: the strict load then lists what is missing)."""
    keys = list(sd)
    blocks = count_indices(keys, r"^body\.(\d+)\.modules_")
    units = count_indices(keys, r"^body\.0\.modules_hrm_a\.lcs_a_(\d+)\.")
    head, tail = sd.get("head.0.weight"), sd.get("tail.0.weight")
    if head is None or tail is None or not blocks or not units:
        return {}
    channels, colors = int(head.shape[0]), int(head.shape[1])
    out = {"m_elan": blocks * units, "channels": channels, "n_share": units - 1,
           "scale": round((int(tail.shape[0]) / colors) ** 0.5)}
    conv0 = [v for k, v in sd.items() if k.startswith("body.0.modules_hrm_a.lcs_a_0.conv0.")
             and k.endswith("weight") and getattr(v, "ndim", 0) == 4 and v.shape[-1] == 3]
    if conv0:
        out["r_expand"] = int(conv0[0].shape[0]) // channels
    return out


def read_lipt_yaml(path: Path) -> Dict[str, Any]:
    """The official config/*.yml: m_elan, c_elan, n_share, r_expand, window_sizes, scale."""
    d = read_yaml(path)
    if d.get("model") not in (None, "lipt", "iptv3"):
        raise ModelError(f"{path} configures model '{d.get('model')}', not LIPT")
    for key, want in (("colors", 3), ("act_type", "relu"), ("rgb_range", 255)):
        if key in d and d[key] != want:
            raise ModelError(f"{path}: {key} {d[key]!r} is not supported (LIPT here uses {want!r})")
    out: Dict[str, Any] = {}
    for key, name in (("m_elan", "m_elan"), ("c_elan", "channels"), ("n_share", "n_share"), ("r_expand", "r_expand"),
                      ("scale", "scale")):
        if d.get(key) is not None:
            out[name] = int(d[key])
    ws = d.get("window_sizes")
    if ws is not None:
        ws = list(ws) if isinstance(ws, (list, tuple)) else [ws]
        if len(set(ws)) != 1:
            raise ModelError(f"{path}: window_sizes {ws} differ per branch; only equal windows are supported")
        out["window"] = int(ws[0])
    return out


def describe_lipt(c: LIPTConfig) -> str:
    return (f"LIPT with {c.blocks} blocks ({c.m_elan} units, n_share {c.n_share}), {c.channels} channels, "
            f"window {c.window}" + (f", r_expand {c.r_expand}" if c.r_expand != 1 else ""))


def lipt_arch_notes(c: LIPTConfig, sources: Mapping[str, str]) -> List[str]:
    if "checkpoint" in sources.values() and sources.get("window", "").startswith("variant"):
        return [f"window {c.window} is not stored in LIPT weights: taken from the {sources['window']} defaults; "
                f"pass --config with the .yml you trained with if it differs"]
    return []
