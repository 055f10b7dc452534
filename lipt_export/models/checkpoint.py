"""Checkpoint reading (weights only, never executing pickles) and strict loading with clear errors.

Accepted layouts: a raw state_dict; a dict holding it under ``model_state_dict`` / ``state_dict`` /
``params_ema`` / ``params`` / ``model``; keys optionally prefixed ``module.`` (DataParallel). A training-form
checkpoint is loaded into the training graph; a deploy-form one (already fused) into the deploy graph.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn

from lipt_export.errors import CheckpointError
from lipt_export.models.reparam import reparameterize_model

# No trained SR weight or normalisation statistic comes near this (the largest in SMSR's official x2 checkpoint:
# 114, its mean shift); a bit flip in a float's exponent gives values like 1e27.
ABSURD_MAGNITUDE = 1e10
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "params_ema", "params", "model", "net", "netG")


def _short(text: str, limit: int = 160) -> str:
    """The first line of an exception message, shortened at a word boundary with an ellipsis (never cut
    mid-word silently)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


def _sniff(path: Path) -> str:
    """What the file looks like: 'empty', 'zip' (torch), 'pickle' (legacy torch), 'safetensors', 'text', 'other'."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head[:2] == b"PK":
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":  # 8-byte little-endian header size, then the JSON header
        return "safetensors"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "text"
    return "other"


def check_checkpoint_file(path: str | Path) -> Path:
    """The cheap checks (before any model work): the path is an existing file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"--weights {path} is a folder; pass the checkpoint file (.pt/.pth/.safetensors)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (pass an existing file with --weights)")
    return path


def read_state_dict(path: str | Path) -> Dict[str, torch.Tensor]:
    """The checkpoint's tensors (weights only: pickles are never executed), refused in one line when the file
    is not a checkpoint, is truncated or corrupt, or holds NaN/Inf values."""
    path = check_checkpoint_file(path)
    kind = _sniff(path)
    if kind in ("empty", "text", "other"):
        what = {"empty": "an empty file", "text": "a text file",
                "other": "not a torch (.pt/.pth) or .safetensors file"}[kind]
        raise CheckpointError(f"cannot read checkpoint {path}: it is {what}; pass the .pt/.pth/.safetensors the "
                              f"training code saved")
    if kind == "zip":
        _check_zip(path)
    try:
        if path.suffix == ".safetensors" or kind == "safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        detail = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else text
        raise CheckpointError(
            f"{path} is not a weights-only checkpoint ({_short(detail)}); re-save it as a plain state_dict "
            f"(torch.save(model.state_dict(), ...)) or as .safetensors") from None
    except Exception as exc:  # truncated or corrupt archive
        raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or corrupt ({type(exc).__name__}: "
                              f"{_short(str(exc), 100)}); copy it again or use another checkpoint") from None
    sd = normalize_state_dict(obj, str(path))
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        count = sum(int((~torch.isfinite(sd[k])).sum()) for k in bad)
        raise CheckpointError(f"checkpoint {path} holds {count} NaN/Inf values in {len(bad)} tensor(s) "
                              f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): training diverged or the file "
                              f"is corrupt; use an earlier checkpoint")
    absurd = [(k, float(v.abs().max())) for k, v in sd.items()
              if v.is_floating_point() and v.numel() and float(v.abs().max()) > ABSURD_MAGNITUDE]
    if absurd:
        k, m = max(absurd, key=lambda kv: kv[1])
        raise CheckpointError(f"checkpoint {path} holds absurd values: |{k}| reaches {m:.3g} ({len(absurd)} tensor(s) "
                              f"above {ABSURD_MAGNITUDE:.0e}); the file is corrupt or training diverged: use another "
                              f"checkpoint")
    return sd


def _check_zip(path: Path) -> None:
    """A torch zip checkpoint whose members match their CRCs (torch's reader does not check them, so a damaged
    copy would load with wrong weights)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or corrupt ({type(exc).__name__}: "
                              f"{_short(str(exc), 100)}); copy it again or use another checkpoint") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: {bad} fails its CRC check; copy it again or use another "
                              f"checkpoint")


def normalize_state_dict(obj, origin: str = "checkpoint") -> Dict[str, torch.Tensor]:
    for _ in range(3):  # unwrap nested training wrappers
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
                continue
        break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{origin} holds no state_dict (expected a dict of tensors, optionally under "
                              f"one of {', '.join(_WRAPPER_KEYS)})")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def _summarize(label: str, keys: List[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")
    return f"{len(keys)} {label} ({shown})"


def _mismatch(model: nn.Module, sd: Dict[str, torch.Tensor]) -> Tuple[List[str], List[str], List[str]]:
    target = model.state_dict()
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    misshaped = [f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}"
                 for k in target if k in sd and tuple(sd[k].shape) != tuple(target[k].shape)]
    return missing, unexpected, misshaped


def load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], *, model_label: str = "model",
                 ignore: Callable[[str], bool] = lambda k: False) -> Tuple[nn.Module, str]:
    """Load strictly. Returns (loaded model, form) with form "train" or "deploy".

    The form is chosen by key overlap: a fused checkpoint loads into the deploy graph built by
    :func:`reparameterize_model`; the training model passed in is left untouched in that case.
    """
    sd = {k: v for k, v in state_dict.items() if not ignore(k)}
    deploy = reparameterize_model(model)
    candidates = [("train", model)]
    if set(deploy.state_dict()) != set(model.state_dict()):
        candidates.append(("deploy", deploy))
    scored = []
    for form, target in candidates:
        missing, unexpected, misshaped = _mismatch(target, sd)
        scored.append((len(missing) + len(unexpected) + len(misshaped), form, target, missing, unexpected,
                       misshaped))
    scored.sort(key=lambda s: s[0])
    bad, form, target, missing, unexpected, misshaped = scored[0]
    if bad:
        parts = [_summarize(lbl, ks) for lbl, ks in (("missing", missing), ("unexpected", unexpected),
                                                     ("misshaped", misshaped)) if ks]
        raise CheckpointError(f"checkpoint does not fit {model_label} ({form} form): " + "; ".join(parts)
                              + "; check --model/--variant/--scale")
    with torch.no_grad():
        target_sd = target.state_dict()
        cast = {k: v.to(dtype=target_sd[k].dtype) for k, v in sd.items()}
    target.load_state_dict(cast, strict=True)
    target.eval()
    return target, form
