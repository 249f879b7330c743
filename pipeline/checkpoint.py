"""Checkpoints: only tensors and plain values, so `torch.load(..., weights_only=True)` opens them.

A checkpoint carries everything `predict` needs: model name and weights, modality, class
names, preprocessing parameters and the chosen threshold (`stored_threshold` reads it).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from . import atomic
from .errors import CheckpointError

FORMAT = "dfp-ckpt/1"
MODEL = ("config", "modality", "preprocess", "model")  # what scoring with a checkpoint needs


def save(path: str | os.PathLike, state: dict) -> None:
    """Written atomically (see `atomic`): a kill at any moment leaves the old file or the new one."""
    # through a Python file, so a failed write (a full disk) surfaces as the OSError behind torch's own error
    with atomic.replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)


def load(path: str | os.PathLike, map_location="cpu", need: tuple[str, ...] = ()) -> dict:
    """The checkpoint's dict, or a one-line CheckpointError: missing, empty, damaged (CRCs), not loadable with
    weights_only, not a dfp checkpoint, or lacking one of the `need` entries."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); was it written by dfp train?")
    _check_crcs(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({_first_line(e)}); "
                              "was it written by dfp train?") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a dfp checkpoint (expected format {FORMAT})")
    missing = [k for k in need if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; was it written by dfp train?")
    return ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip()  # str(EOFError()) is empty
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _check_crcs(path: Path) -> None:
    """`torch.save` writes a zip whose records carry CRC-32s, which `torch.load` never checks: a flipped bit in a
    tensor would load as other weights. Reading every record once costs about as much as the load itself
    (page cache); a file that is not a zip at all is left to `torch.load`'s own error."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged ({_first_line(e)}); "
                              "use another copy or train again") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged (record {bad} fails its CRC check); "
                              "use another copy or train again")


def model_from_checkpoint(ckpt: dict, device: torch.device, path: str | os.PathLike = "the checkpoint"):
    from .models import build_model
    cfg = ckpt["config"]
    model = build_model(cfg["model"], ckpt["modality"], frame_backbone=cfg.get("frame_backbone", "efficientnet_b0"),
                        image_size=(ckpt.get("preprocess") or {}).get("image_size"), config=ckpt.get("model_config"))
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as e:  # torch lists every missing or misshapen tensor
        raise CheckpointError(f"{path}: its weights do not fit model {cfg['model']} "
                              f"({' '.join(str(e).split())[:200]}); was it written by dfp train?") from None
    return model.to(device).eval()


def stored_threshold(ckpt: dict) -> dict:
    """The checkpoint's chosen threshold as metrics.json's "chosen" holds it: "method", "threshold" and, from
    `dfp train`, "requested" and "fallback_reason"; the default 0.5 when the checkpoint stores none."""
    from .thresholds import DEFAULT_THRESHOLD, threshold_record
    return threshold_record(ckpt.get("threshold") or {"method": "default", "threshold": DEFAULT_THRESHOLD})


def threshold_history(ckpt: dict) -> list[dict]:
    """The thresholds `dfp tune` replaced, oldest first, keyed as `stored_threshold` plus "replaced_at"."""
    from .thresholds import threshold_record
    return [threshold_record(h) if isinstance(h, dict) else h for h in ckpt.get("threshold_history") or []]


def set_threshold(path: str | os.PathLike, method: str, threshold: float) -> dict:
    """Store a new threshold; the one it replaces is appended to "threshold_history" (its keys plus
    "replaced_at", UTC), so a re-tune can be undone by hand. Rewritten atomically; returns the new checkpoint."""
    from datetime import datetime, timezone

    ckpt = load(path)
    history = threshold_history(ckpt)
    if ckpt.get("threshold"):
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        history.append({**stored_threshold(ckpt), "replaced_at": now})
    ckpt["threshold"] = {"method": method, "threshold": float(threshold)}
    ckpt["threshold_history"] = history
    ckpt.pop("format", None)
    save(path, ckpt)
    return ckpt
