"""`dfp evaluate` and `dfp tune`: a saved model on a split of shards."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import atomic, checkpoint
from .engine import amp_setup, predict
from .errors import InputError
from .loaders import LoaderOptions, make_loader, resolve_backend, resolve_device


def eval_backend(ckpt: dict, backend: str = "auto") -> str:
    """auto: the backend the model was trained and tuned with, so its threshold meets the same eval transforms."""
    if backend == "auto":
        backend = ckpt["config"].get("backend", "auto")
    return resolve_backend(backend)


def eval_options(ckpt: dict, batch_size: int, workers: int = 2) -> LoaderOptions:
    pre = ckpt["preprocess"]
    norm = {k: tuple(pre[k]) if k != "interpolation" else pre[k] for k in ("mean", "std", "interpolation") if pre.get(k)}
    return LoaderOptions(batch_size=batch_size, train=False, image_size=pre["image_size"],
                         audio_seconds=pre["audio_seconds"], workers=workers, **norm)


def _predict_split(ckpt_path, shards, split, device, backend, batch_size, workers=2):
    device = resolve_device(device)
    ckpt = checkpoint.load(ckpt_path, map_location=device, need=checkpoint.MODEL)
    from .formats import read_manifest
    manifest = read_manifest(shards)
    if manifest["modality"] != ckpt["modality"]:
        raise InputError(f"{ckpt_path} is a {ckpt['modality']} model but {shards} holds {manifest['modality']} shards")
    if split not in manifest["splits"] or sum(manifest["splits"][split].values()) == 0:
        raise InputError(f"{shards}: split '{split}' is empty")
    model = checkpoint.model_from_checkpoint(ckpt, device, ckpt_path)
    loader = make_loader(shards, split, eval_backend(ckpt, backend), device, eval_options(ckpt, batch_size, workers),
                         manifest=manifest)
    amp_dtype, _ = amp_setup(device, "auto")
    keys, labels, scores, _ = predict(model, loader, device, amp_dtype, progress=True, desc=split)
    if np.isnan(scores).any():
        raise InputError(f"{ckpt_path}: the model produced NaN scores on {shards} split {split}")
    return ckpt, loader, keys, labels, scores


def evaluate(ckpt_path, shards, split="test", out=None, device="auto", backend="auto", batch_size=64, log=print) -> dict:
    from .metrics import split_report
    from .report import render_report
    from .predictions import attack_names, write_predictions
    ckpt, loader, keys, labels, scores = _predict_split(ckpt_path, shards, split, device, backend, batch_size)
    thr = ckpt.get("threshold") or {"method": "default", "value": 0.5}
    meta = loader.sample_meta(keys)
    rep = split_report(labels, scores, 0.5, thr["value"], attack_names(keys, meta))
    out = Path(out) if out else Path(ckpt_path).parent / f"eval_{split}"
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / f"predictions_{split}.csv", keys, labels, scores, meta)
    metrics = {"val": rep if split == "val" else None, "test": rep if split != "val" else None,
               "thresholds": {thr["method"]: thr["value"]},
               "chosen": {("threshold" if k == "value" else k): v for k, v in thr.items()},
               "evaluated_split": split}
    atomic.write_json(out / "metrics.json", metrics, default=str)
    cfg = dict(ckpt["config"])
    from .formats import read_manifest
    cfg["dataset"] = {"shards": str(shards), "modality": ckpt["modality"], "splits": read_manifest(shards)["splits"]}
    atomic.write_json(out / "config.json", cfg, default=str)
    if split in ("val", "test"):
        render_report(out)
    _log_results(log, split, labels, rep, thr)
    log(f"written: {out}")
    return metrics


def _log_results(log, split: str, labels: np.ndarray, rep: dict, thr: dict) -> None:
    from .report import console_summary
    chosen = {**thr, "threshold": thr["value"]}
    log(console_summary(f"{split}: {len(labels)} samples ({int((labels == 0).sum())} real, {int(labels.sum())} fake)",
                        rep, chosen))


def tune(ckpt_path, shards, method="f1", device="auto", backend="auto", batch_size=64, log=print) -> float:
    from .metrics import metric_dict
    from .thresholds import ThresholdUndefined, all_thresholds, canonical_method, parse_method, tune as tune_threshold
    try:
        parse_method(method)
    except ValueError as e:
        raise InputError(f"--method: {e}") from None
    _, _, _, labels, scores = _predict_split(ckpt_path, shards, "val", device, backend, batch_size)
    try:
        t = tune_threshold(labels, scores, method)
        table = all_thresholds(labels, scores, [method] if ":" in method else [])
    except ThresholdUndefined as e:
        raise InputError(f"cannot tune on the val split of {shards}: {e}") from None
    for name, value in table.items():
        m = metric_dict(labels, scores, value)
        log(f"  {name:>16s}: threshold {value:.4f}  P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}")
    checkpoint.set_threshold(ckpt_path, canonical_method(method), t)
    log(f"stored threshold {t:.4f} ({canonical_method(method)}) in {ckpt_path}")
    return t
