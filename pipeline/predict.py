"""`dfp predict`: raw files in, one CSV row per file out, using the checkpoint's threshold.

Files go through the same preparation as the shard builder (`media.prepare`) and the same
evaluation transforms as the loaders (`loaders.decode`), so scores match what evaluation saw.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .engine import amp_setup, autocast
from .loaders import resolve_device
from .loaders.decode import LoaderConfig, audio_sample, visual_sample
from .augment import AudioFeatures, normalize_images, torch_log_mel
from .media import MediaError, prepare
from .sources import EXTENSIONS, InputError


def collect_files(paths: list[Path], modality: str) -> list[Path]:
    files = []
    for p in paths:
        if p.is_dir():
            for dirpath, dirnames, names in os.walk(p):
                dirnames.sort()
                files += [Path(dirpath) / n for n in sorted(names)]
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"{p} does not exist")
    return files


def _sample(path: Path, modality: str, params: dict, cfg: LoaderConfig):
    if path.suffix.lower() not in EXTENSIONS[modality]:
        raise MediaError(f"unsupported extension for a {modality} model")
    payload, _ = prepare(path, modality, params)
    comps = list(payload.values())
    if modality == "audio":
        x = audio_sample(comps, cfg, False, np.random.default_rng(0))
        return None if x is None else torch.from_numpy(x)
    return visual_sample(comps, cfg, False)


def predict_files(ckpt_path, paths: list[Path], out: Path, device="auto", batch_size=32, log=print) -> dict:
    device = resolve_device(device)
    ckpt = checkpoint.load(ckpt_path, map_location=device)
    modality, pre = ckpt["modality"], ckpt["preprocess"]
    thr = (ckpt.get("threshold") or {}).get("value", 0.5)
    model = checkpoint.model_from_checkpoint(ckpt, device)
    files = collect_files(paths, modality)
    if not files:
        raise InputError("no files found under " + ", ".join(str(p) for p in paths))
    cfg = LoaderConfig(modality, pre["image_size"], AudioFeatures(sample_rate=pre.get("sample_rate") or 16000,
                                                                   seconds=pre["audio_seconds"]), (), False)
    params = {"max_side": pre.get("max_side") or 512, "sample_rate": pre.get("sample_rate") or 16000,
              "frames": pre.get("frames") or 16}
    amp_dtype, _ = amp_setup(device, "auto")
    rows: list[tuple[str, str, str, str]] = []
    from tqdm import tqdm
    bar = tqdm(total=len(files), unit="file", desc="predict", dynamic_ncols=True)
    batch, names = [], []

    def flush():
        if not batch:
            return
        x = torch.stack(batch).to(device)
        x = torch_log_mel(x, cfg.audio) if modality == "audio" else normalize_images(x)
        with torch.no_grad(), autocast(device, amp_dtype):
            scores = torch.sigmoid(model(x).float()).cpu().numpy()
        for n, s in zip(names, scores):
            # float(s): the decision is taken on the float64 the CSV holds; a float32 score against the
            # float64 threshold would be compared in float32 (NumPy 2) and could flip a tie.
            rows.append((n, repr(float(s)), "fake" if float(s) >= thr else "real", ""))
        batch.clear()
        names.clear()

    for f in files:
        try:
            x = _sample(f, modality, params, cfg)
            if x is None:
                raise MediaError("corrupt: cannot decode")
        except MediaError as e:
            rows.append((str(f), "", "", str(e)))
        else:
            batch.append(x)
            names.append(str(f))
            if len(batch) >= batch_size:
                flush()
        bar.update(1)
    flush()
    bar.close()
    order = {str(f): i for i, f in enumerate(files)}
    rows.sort(key=lambda r: order[r[0]])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "score", "label", "error"])
        w.writerows(rows)
    os.replace(tmp, out)
    n_fake = sum(r[2] == "fake" for r in rows)
    n_err = sum(bool(r[3]) for r in rows)
    log(f"{len(rows)} files: {n_fake} fake, {len(rows) - n_fake - n_err} real, {n_err} unreadable "
        f"(threshold {thr:.4f}); written {out}")
    return {"files": len(rows), "fake": n_fake, "errors": n_err}
