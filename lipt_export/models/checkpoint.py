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

_WRAPPER_KEYS = ("model_state_dict", "state_dict", "params_ema", "params", "model", "net", "netG")


def read_state_dict(path: str | Path) -> Dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (pass an existing file with --weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic != b"PK" and magic[:1] != b"\x80":  # neither torch's zip format nor a legacy pickle
            raise CheckpointError(f"cannot read checkpoint {path}: not a torch (.pt/.pth) or .safetensors "
                                  f"file") from None
        text = str(exc)
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if \
            "WeightsUnpickler error:" in text else text.strip().splitlines()[0]
        raise CheckpointError(
            f"{path} is not a weights-only checkpoint ({detail[:160]}); re-save it as a plain state_dict "
            f"(torch.save(model.state_dict(), ...)) or as .safetensors") from None
    except Exception as exc:  # corrupt zip, truncated file, not a torch file at all
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160] if str(exc) else ''}") from None
    return normalize_state_dict(obj, str(path))


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
