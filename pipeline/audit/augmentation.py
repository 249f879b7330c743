"""Augmentation traces: can the class be told from what the training loader did to a sample?

Training batches are drawn through the real loader (`loaders.make_loader`, as `dfp train` builds it),
and each sample is described by features an augmentation changes but a forgery need not: for images
and video frames the share of pixels painted with a corner's colour (a rotation's constant fill),
colour spread (saturation jitter), brightness, contrast and sharpness (crop scale); for log-mels the
share of cells, whole frames and whole bands at the clip's minimum (time and frequency masks), the
noise floor and level (added noise, gain). Each feature gets a direction-free AUC real vs fake, and two
small probes (logistic regression, cross-validated with the folds grouped by sample, so a repeated
sample never sits on both sides) are trained on all features and on the batches themselves pooled to
a few cells. `trace_auc` is the better probe's out-of-fold AUC. Content that differs between the
classes shows here too: `baseline=True` also audits unaugmented (evaluation) batches of the same
split, so what the augmentation adds is `trace_auc - baseline_auc`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

_FILL_TOL = 1.0  # pixel levels (of 255) within which a pixel counts as a corner's fill colour
_MIN_TOL = 1e-3  # dB within which a log-mel cell counts as the clip's minimum


def augmentation_trace(shards, backend: str = "torch", device: str = "cpu", batches: int = 16, batch_size: int = 32,
                       seed: int = 0, split: str = "train", options: dict | None = None, pixels: bool = True,
                       baseline: bool = False, folds: int = 5) -> dict:
    """`{"features": [{"name", "auc"}], "trace_auc", "feature_probe_auc", "pixel_probe_auc", "n", "modality"}`
    from `batches` training batches; `options`: further `LoaderOptions` fields (image_size, audio_seconds,
    sampling, minority_augment, workers, ...), as training would set them. Feature AUCs are direction-free
    (max(a, 1 - a)); a probe's out-of-fold AUC below chance counts as chance (0.5)."""
    from ..loaders import LoaderOptions, make_loader
    extra = dict(options or {})
    extra.setdefault("workers", 0)
    opts = LoaderOptions(batch_size=batch_size, train=True, seed=seed, epoch_len=batches * batch_size, **extra)
    loader = make_loader(shards, split, backend, device, opts)
    out = _audit(_draw(loader, batches), loader.modality, pixels, folds, seed)
    if baseline:
        ev = make_loader(shards, split, backend, device, replace(opts, train=False))
        out["baseline_auc"] = _audit(_draw(ev, batches), ev.modality, pixels, folds, seed)["trace_auc"]
    return out


def _draw(loader, batches: int):
    """(inputs on the CPU, labels, keys) of up to `batches` batches."""
    xs, ys, keys = [], [], []
    for b, (x, y, k) in enumerate(loader):
        if b >= batches:
            break
        xs.append(x.detach().float().cpu())
        ys.append(y.cpu().numpy())
        keys += list(k)
    import torch
    return torch.cat(xs), np.concatenate(ys).astype(int), np.asarray(keys)


def _audit(drawn, modality: str, pixels: bool, folds: int, seed: int) -> dict:
    x, y, keys = drawn
    feats = audio_features(x) if modality == "audio" else image_features(x)
    names = list(feats)
    for name in names:  # a recipe that varies more for one class shows as spread, not as a shift
        feats[f"{name}_spread"] = np.abs(feats[name] - np.median(feats[name]))
    table = np.stack([feats[n] for n in feats], 1)
    rows = [{"name": n, "auc": round(_free_auc(y, table[:, i]), 4)} for i, n in enumerate(feats)]
    groups = np.unique(keys, return_inverse=True)[1]
    feature_probe = _probe_auc(table, y, groups, folds, seed, c=1.0)
    pixel_probe = _probe_auc(_pooled(x, modality), y, groups, folds, seed, c=0.05) if pixels else None
    trace = max(feature_probe, pixel_probe or 0.0)
    return {"modality": modality, "n": int(len(y)), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum()),
            "features": sorted(rows, key=lambda r: -r["auc"]), "feature_probe_auc": round(feature_probe, 4),
            "pixel_probe_auc": None if pixel_probe is None else round(pixel_probe, 4), "trace_auc": round(trace, 4)}


# ---------------------------------------------------------------- per-sample features
def image_features(x) -> dict[str, np.ndarray]:
    """Normalised (B, 3, H, W) images or (B, T, 3, H, W) clips -> per-sample features (a clip's frames averaged)."""
    import torch
    from ..augment import MEAN, STD
    scale, bias = (torch.tensor([255.0 * v for v in stat]).view(3, 1, 1) for stat in (STD, MEAN))
    px = x * scale + bias
    clip = px.dim() == 5
    if clip:
        b, t = px.shape[:2]
        px = px.flatten(0, 1)
    corners = torch.stack([px[:, :, 0, 0], px[:, :, 0, -1], px[:, :, -1, 0], px[:, :, -1, -1]], 1)  # (N, 4, 3)
    near = (px[:, None] - corners[..., None, None]).abs().amax(dim=2) < _FILL_TOL  # (N, 4, H, W)
    luma = 0.299 * px[:, 0] + 0.587 * px[:, 1] + 0.114 * px[:, 2]
    chroma = px.amax(dim=1) - px.amin(dim=1)
    edges = ((luma[:, 1:, :] - luma[:, :-1, :]).abs().mean((1, 2))
             + (luma[:, :, 1:] - luma[:, :, :-1]).abs().mean((1, 2)))
    f = {"fill_share": near.float().mean((2, 3)).amax(1), "saturation": chroma.mean((1, 2)),
         "saturation_std": chroma.std((1, 2)), "brightness": luma.mean((1, 2)), "contrast": luma.std((1, 2)),
         "sharpness": edges / (luma.std((1, 2)) + 1.0)}
    if clip:
        f = {k: v.view(b, t).mean(1) for k, v in f.items()}
    return {k: v.numpy().astype(np.float64) for k, v in f.items()}


def audio_features(x) -> dict[str, np.ndarray]:
    """(B, 1, n_mels, frames) log-mels in dB -> per-sample features."""
    db = x.flatten(0, 1) if x.dim() == 4 else x
    low = db.amin((1, 2), keepdim=True)
    at_min = (db - low) < _MIN_TOL
    peak = db.amax((1, 2))
    flat = db.flatten(1)
    f = {"masked_share": at_min.float().mean((1, 2)), "masked_frames": at_min.all(1).float().mean(1),
         "masked_bands": at_min.all(2).float().mean(1), "noise_floor": flat.quantile(0.1, dim=1) - peak,
         "level": peak, "spread": flat.std(1)}
    return {k: v.numpy().astype(np.float64) for k, v in f.items()}


def _pooled(x, modality: str) -> np.ndarray:
    """The batch itself at a few cells per sample: 16x16 for a log-mel, 8x8 per channel for an image
    (a clip's frames averaged)."""
    import torch.nn.functional as F
    if modality == "audio":
        cells = F.adaptive_avg_pool2d(x.flatten(0, 1)[:, None] if x.dim() == 4 else x[:, None], (16, 16))
    else:
        cells = F.adaptive_avg_pool2d(x.mean(1) if x.dim() == 5 else x, (8, 8))
    return cells.flatten(1).numpy().astype(np.float64)


# ---------------------------------------------------------------- AUCs
def _free_auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    if len(np.unique(y)) < 2 or np.ptp(score) == 0:
        return 0.5
    a = float(roc_auc_score(y, score))
    return max(a, 1.0 - a)


def _probe_auc(table: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int, c: float) -> float:
    """Out-of-fold AUC of a standardised logistic regression, folds grouped by sample."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    k = min(folds, len(np.unique(groups)))
    if len(np.unique(y)) < 2 or k < 2:
        return 0.5
    score = np.zeros(len(y))
    for fit, held in GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(table, y, groups):
        if len(np.unique(y[fit])) < 2:
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        score[held] = model.fit(table[fit], y[fit]).decision_function(table[held])
    return max(float(roc_auc_score(y, score)), 0.5)
