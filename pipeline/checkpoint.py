"""Checkpoints: only tensors and plain values, so `torch.load(..., weights_only=True)` opens them.

A checkpoint carries everything `predict` needs: model name and weights, modality, class
names, preprocessing parameters and the chosen threshold.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import atomic
from .errors import CheckpointError

FORMAT = "dfp-ckpt/1"


def save(path: str | os.PathLike, state: dict) -> None:
    """Written atomically (see `atomic`): a kill at any moment leaves the old file or the new one."""
    # through a Python file, so a failed write (a full disk) surfaces as the OSError behind torch's own error
    with atomic.replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "was it written by dfp train?") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a dfp checkpoint (expected format {FORMAT})")
    return ckpt


def model_from_checkpoint(ckpt: dict, device: torch.device):
    from .models import build_model
    cfg = ckpt["config"]
    model = build_model(cfg["model"], ckpt["modality"], frame_backbone=cfg.get("frame_backbone", "efficientnet_b0"))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def set_threshold(path: str | os.PathLike, method: str, threshold: float) -> None:
    ckpt = load(path)
    ckpt["threshold"] = {"method": method, "value": float(threshold)}
    ckpt.pop("format", None)
    save(path, ckpt)
