"""Shortcut audit: properties that should not carry the label (format, compression, size, silence, rate, ...),
compared real vs fake, one direction-free AUC each and a grouped cross-validated classifier over all of them.

On raw input it audits the files as `dfp shard` with the same options would find and label them; on a shard
folder it audits what the model will see (the stored samples) and, beside it, the source metadata the packer
recorded in each sample's KEY.json. It reads only; nothing is written into the audited folder.
Feature modules (image.py, audio.py, video.py) and scikit-learn are imported when needed.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from .. import storage
from ..formats import CLASSES, MANIFEST, read_index_entries, read_manifest

FLAG_AT = 0.8
DEFAULT_MAX_PER_CLASS = 2000
STATS_MAX_PER_CLASS = 200  # dfp stats: the headline in bounded time
TRAIN_MAX_PER_CLASS = 500  # dfp train: the train split, in bounded time
PARALLEL_FROM = 400  # files: below this, starting worker processes costs more than it saves
_STREAM = 11  # limit_per_class stream of the audit's draw (the packer and loader use others)

_DEBIAS = "re-encode both classes alike: dfp shard --debias"
REMEDIES = {
    "format": _DEBIAS + " (one codec, no byte-kept JPEGs)",
    "jpeg_quality": _DEBIAS + " (one JPEG quality)",
    "chroma_subsampling": _DEBIAS + " (one chroma subsampling)",
    "bytes_per_pixel": _DEBIAS + " (compression differs per class)",
    "width": "bring both classes to one size by one rule: dfp shard --debias",
    "height": "bring both classes to one size by one rule: dfp shard --debias",
    "aspect_ratio": "crop both classes to one aspect ratio by one rule, or collect fakes at the reals' shapes",
    "size_share": "one class comes in a few fixed sizes: resize both alike (dfp shard --debias) or match the sizes",
    "metadata": "strip metadata from both classes alike: dfp shard --debias re-encodes without it",
    "color_mode": "convert both classes to 8-bit RGB alike before packing: dfp shard --debias",
    "bit_depth": "convert both classes to one bit depth alike: dfp shard --debias",
    "sample_rate": "resample both classes to one rate from the same original rate, or collect matched rates: dfp shard --debias",
    "channels": "mix both classes to mono alike (dfp shard does for the stored audio)",
    "codec": _DEBIAS + " (one codec)",
    "duration": "cut both classes to one length (dfp train crops to --audio-seconds) or collect matched durations",
    "leading_silence": "trim leading and trailing silence by one energy rule: dfp shard --debias",
    "trailing_silence": "trim leading and trailing silence by one energy rule: dfp shard --debias",
    "peak_db": "normalise the level of both classes alike (peak or RMS normalisation)",
    "rms_db": "normalise the level of both classes alike (peak or RMS normalisation)",
    "dc_offset": "remove the DC offset from both classes alike (high-pass filter)",
    "noise_floor_db": "the background noise differs: add the same noise to both classes or collect matched recordings",
    "frame_rate": _DEBIAS + " (one frame rate)",
    "bitrate": _DEBIAS + " (one bitrate / quality)",
    "frame_count": "sample a fixed number of frames from both classes (dfp shard --frames) and match clip lengths",
    "audio_track": "remove or keep the audio track in both classes alike",
}


# KEY.json's names for the source files' properties (the `source_` features of a shard audit)
_SOURCE_NAMES = {"orig_format": "format", "orig_sample_rate": "sample_rate", "fps": "frame_rate",
                 "orig_frames": "frame_count"}


def remedy(name: str) -> str | None:
    base = name.removeprefix("source_")
    return REMEDIES.get(_SOURCE_NAMES.get(base, base))


# --------------------------------------------------------------------------- what is audited
def _draw(labels: np.ndarray, max_per_class: int | None, seed: int) -> np.ndarray:
    from ..sampling import limit_per_class
    if not max_per_class:
        return np.arange(len(labels))
    return limit_per_class(labels, max_per_class, seed, stream=_STREAM)


def _raw_items(path: Path, params, max_per_class, seed):
    """(class, group, source, job) of the planned candidates, drawn per class (`_extract` runs a job)."""
    from ..shards import _plan
    plan = _plan(path, replace(params, faces=False))
    cands = plan.cands
    if not cands:
        raise InputError(f"{path}: not a dfp shard folder and no labelled files found (put files under real/ and fake/, "
                         f"or give --dataset/--protocol/--class-map)")
    labels = np.array([CLASSES.index(c.cls) for c in cands], np.int8)
    items = [(c.cls, c.group or c.source, c.source, ("file", plan.modality, str(c.path)))
             for c in (cands[i] for i in _draw(labels, max_per_class, seed))]
    return plan.modality, items, f"input {path} ({params.dataset})"


def _file_features(modality: str, path: str) -> dict:
    if modality == "image":
        from .image import features
        return features(path, os.path.getsize(path))
    if modality == "audio":
        from .audio import features_any
        return features_any(path)
    from .video import features
    return features(path)


def _read_stored(modality: str, tar: str, comps: dict) -> tuple[dict, dict]:
    if storage.is_url(tar):  # one ranged read: a sample's members are adjacent in the tar
        lo = min(off for off, _ in comps.values())
        span = storage.read_bytes(tar, lo, max(off + size for off, size in comps.values()))
        data = {ext: span[off - lo:off - lo + size] for ext, (off, size) in comps.items()}
    else:
        with open(tar, "rb") as f:
            data = {}
            for ext, (off, size) in comps.items():
                f.seek(off)
                data[ext] = f.read(size)
    meta = json.loads(data.get("json", b"{}"))
    return meta, _stored_features(modality, data) | {"__source__": _source_features(modality, meta)}


def _extract(job):
    """Features of one raw file, or (KEY.json, features) of one stored sample; None when it cannot be read
    (counted, not fatal: the packer would reject such a file too)."""
    try:
        return _file_features(*job[1:]) if job[0] == "file" else _read_stored(*job[1:])
    except Exception:
        return None


_SOURCE_KEYS = {"image": ("width", "height", "orig_format"), "audio": ("orig_sample_rate", "channels", "duration"),
                "video": ("orig_frames", "fps", "width", "height", "face_frames_dropped")}


def _stored_features(modality: str, data: dict[str, bytes]) -> dict:
    if modality == "audio":
        from .audio import features
        return features(data["flac"])
    from .image import features
    ext = "jpg" if modality == "image" else "f000.jpg"  # video: the first stored frame (or face crop)
    return features(data[ext], len(data[ext]))


def _source_features(modality: str, meta: dict) -> dict:
    out = {}
    for k in _SOURCE_KEYS[modality]:
        if k in meta and meta[k] is not None:
            v = meta[k]
            out["source_" + k] = v if isinstance(v, str) else float(v)
    return out


def _shard_items(path, splits, max_per_class, seed):
    manifest = read_manifest(path)
    modality = manifest["modality"]
    tar_at = (lambda rel: storage.join(path, rel)) if storage.is_url(path) else (lambda rel: str(path / rel))
    entries = []
    for row in manifest["shards"]:
        if row["split"] in splits:
            idx = tar_at(row["path"])[:-4] + ".idx"
            if storage.is_url(idx):
                import io
                idx = io.StringIO(storage.read_text(idx))
            for _, comps in read_index_entries(idx, row["path"][:-4] + ".idx"):
                entries.append((row, comps))
    if not entries:
        raise InputError(f"{path}: no samples in split(s) {', '.join(splits)}")
    labels = np.array([CLASSES.index(r["class"]) for r, _ in entries], np.int8)

    items = []
    for i in _draw(labels, max_per_class, seed):
        row, comps = entries[i]
        items.append((row["class"], None, f"{row['path']}#{i}", ("shard", modality, tar_at(row["path"]), comps)))
    return modality, items, f"shards {path} ({', '.join(splits)})", manifest


# --------------------------------------------------------------------------- the audit
def _collect(items, progress: bool, desc: str, workers: int = 1):
    rows, sources, labels, groups, failed = [], [], [], [], 0
    bar = None
    if progress and len(items) > 200:
        from tqdm import tqdm
        bar = tqdm(total=len(items), unit="file", desc=desc, dynamic_ncols=True)
    pool = None
    if workers > 1 and len(items) >= PARALLEL_FROM:
        import multiprocessing as mp
        pool = mp.get_context("fork").Pool(workers)
    try:
        jobs = (it[3] for it in items)
        results = pool.imap(_extract, jobs, chunksize=32) if pool else map(_extract, jobs)
        for (cls, group, name, _), got in zip(items, results):
            failed += got is None
            if bar:
                bar.update(1)
            if got is not None:
                _add(got, cls, group, name, rows, sources, labels, groups)
    finally:
        if pool:
            pool.terminate()
        if bar:
            bar.close()
    return rows, sources, np.asarray(labels, np.int8), groups, failed


def _add(got, cls, group, name, rows, sources, labels, groups) -> None:
    if isinstance(got, tuple):  # shards: (KEY.json, features)
        meta, feats = got
        sources.append(feats.pop("__source__"))
        group = meta.get("group") or meta.get("source") or name
    else:
        feats = got
    rows.append(feats)
    labels.append(CLASSES.index(cls))
    groups.append(group)


def _fixed(rows, y) -> dict:
    from .image import fixed_sizes
    return {c: fixed_sizes([r for r, k in zip(rows, y) if k == i]) for i, c in enumerate(CLASSES)}


def _block(rows, y, groups, flag_at, seed) -> dict:
    from .score import score
    return score(rows, y, groups, flag_at, remedy, seed)


def run_audit(path: str | Path, params=None, max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
              flag_at: float = FLAG_AT, splits=("train", "val", "test"), seed: int = 0, progress: bool = True,
              workers: int | None = None) -> dict:
    """The audit of a shard folder or a raw input (`params`: the ShardParams that decide discovery and labels).
    `workers`: header-reading processes (default: all cores; 1 reads in this process)."""
    t0 = time.time()
    remote = storage.is_url(path)
    path = str(path).rstrip("/") if remote else Path(path)
    if not remote and not path.is_dir():
        raise InputError(f"{path}: not a folder (give a shard folder or raw input as for dfp shard)")
    manifest = None
    if remote or (path / MANIFEST).is_file():
        modality, items, what, manifest = _shard_items(path, splits, max_per_class, seed)
    else:
        from ..shards import ShardParams
        modality, items, what = _raw_items(path, params or ShardParams(), max_per_class, seed)
    if modality != "audio":
        from .image import _reference_tables
        _reference_tables()  # once, before any worker forks
    rows, sources, y, groups, failed = _collect(items, progress, f"auditing {modality}", workers or os.cpu_count() or 1)
    n = {c: int((y == i).sum()) for i, c in enumerate(CLASSES)}
    if min(n.values()) == 0:
        have = [c for c in CLASSES if n[c]] or ["no"]
        raise InputError(f"{path}: only {have[0]} samples could be read; the audit compares real with fake files")
    fixed = None
    if modality != "audio":
        from .image import add_size_share
        fixed = _fixed(rows, y)
        add_size_share(rows)
    out = {"audited": what, "modality": modality, "n": n, "unreadable": failed, "flag_at": flag_at,
           "max_per_class": max_per_class}
    out |= _block(rows, y, groups, flag_at, seed)
    if fixed is not None:
        out["fixed_sizes"] = fixed
    if manifest is not None:
        if any(sources):
            out["source_metadata"] = _block(sources, y, groups, flag_at, seed)
            out["source_metadata"]["note"] = "recorded by dfp shard in each sample's KEY.json (the files before packing)"
        else:
            out["source_metadata"] = {"note": "the manifest and KEY.json record no source metadata: stored samples only"}
    out["seconds"] = round(time.time() - t0, 3)
    out["files_per_s"] = round((len(rows) + failed) / max(out["seconds"], 1e-9), 1)
    return out


# --------------------------------------------------------------------------- presenting it
def headline(a: dict) -> str:
    """One or two lines: the combined AUC and the flagged features."""
    comb = "n/a" if a.get("combined_auc") is None else f"{a['combined_auc']:.2f}"
    auc = {f["name"]: f["auc"] for f in a["features"]}
    line = (f"Shortcut audit ({a['n']['real']} real, {a['n']['fake']} fake {a['modality']} samples): "
            f"combined AUC {comb}; ")
    line += ("flagged: " + ", ".join(f"{n} {auc[n]:.2f}" for n in a["flagged"]) + " (dfp audit for remedies)"
             if a["flagged"] else f"nothing flagged at AUC >= {a['flag_at']}")
    src = a.get("source_metadata") or {}
    if src.get("flagged"):
        sauc = {f["name"]: f["auc"] for f in src["features"]}
        line += "\n  source files (before packing) flagged: " + ", ".join(f"{n} {sauc[n]:.2f}" for n in src["flagged"])
    return line


def format_audit(a: dict) -> str:
    lines = [f"Shortcut audit of {a['audited']}: {a['n']['real']} real, {a['n']['fake']} fake"
             + (f" ({a['unreadable']} unreadable, skipped)" if a["unreadable"] else "")]
    lines += _table(a)
    src = a.get("source_metadata")
    if src and "features" in src:
        lines.append("Source files before packing (KEY.json):")
        lines += _table(src)
    elif src:
        lines.append(src["note"])
    if a.get("fixed_sizes"):
        lines.append("fixed sizes (a few sizes cover >= 90% of the class): "
                     + "; ".join(f"{c} {', '.join(s) if s else 'none'}" for c, s in a["fixed_sizes"].items()))
    lines.append(headline(a))
    if a.get("augmentation"):
        lines += augmentation_lines(a["augmentation"])
    return "\n".join(lines)


# Above this a probe tells the classes apart from augmentation traces alone (issue 20's bar for the default recipe).
TRACE_LIMIT = 0.6


def augmentation_report(shards, backend: str, device: str, batches: int, batch_size: int, image_size: int,
                        seed: int) -> dict:
    """`dfp audit SHARDS --augmentation`: training batches through the real loader (as `dfp train` draws them,
    with the default minority augmentation), the trace AUC, and beside it the same audit on evaluation batches
    (no augmentation), which tells a trace of augmentation from a difference in the content itself."""
    from ..loaders import resolve_backend, resolve_device
    from .augmentation import augmentation_trace
    backend, dev = resolve_backend(backend), str(resolve_device(device))
    out = augmentation_trace(shards, backend, dev, batches, batch_size, seed,
                             options={"image_size": image_size}, baseline=True)
    out.update(backend=backend, device=dev, limit=TRACE_LIMIT,
               flagged=bool(out["trace_auc"] > TRACE_LIMIT and out["trace_auc"] > out["baseline_auc"] + 0.05))
    return out


def augmentation_lines(t: dict) -> list[str]:
    top = sorted(t["features"], key=lambda f: -f["auc"])[:3]
    return [f"Augmentation traces ({t['n']} training samples, {t['backend']} on {t['device']}): trace AUC "
            f"{t['trace_auc']:.3f}, without augmentation {t['baseline_auc']:.3f}"
            + ("  FLAG: augmentation tells the classes apart" if t["flagged"] else f" (limit {t['limit']})"),
            "  strongest traces: " + ", ".join(f"{f['name']} {f['auc']:.2f}" for f in top)]


def _table(a: dict) -> list[str]:
    lines = [f"  {'feature':24s} {'AUC':>5s}  {'real':28s} {'fake':28s}"]
    for f in a["features"]:
        mark = "  FLAG" if f["name"] in a["flagged"] else ""
        lines.append(f"  {f['name']:24s} {f['auc']:5.2f}  {_brief(f['real']):28s} {_brief(f['fake']):28s}{mark}")
    comb = "n/a" if a.get("combined_auc") is None else f"{a['combined_auc']:.3f}"
    lines.append(f"  combined AUC {comb} ({a.get('combined_model', '')})")
    for n in a["flagged"]:
        lines.append(f"  {n}: {a['remedies'][n]}")
    return lines


def _brief(s: dict) -> str:
    if "top" in s:
        return ", ".join(f"{k} {v:.0%}" for k, v in list(s["top"].items())[:2])[:28]
    if "median" not in s:
        return "missing"
    return f"median {s['median']:.4g} [{s['p5']:.4g}, {s['p95']:.4g}]"[:28]


def plot_aucs(a: dict) -> bytes:
    """PNG bytes of a horizontal bar chart of the feature AUCs, flagged bars red, the flag line dashed."""
    from ..report.plots import _figure, png_bytes
    feats = a["features"][::-1]
    fig, (ax,) = _figure(7, 0.8 + 0.28 * max(len(feats), 1))
    names = [f["name"] for f in feats]
    ax.barh(names, [f["auc"] - 0.5 for f in feats], left=0.5,
            color=["tab:red" if f["name"] in a["flagged"] else "tab:blue" for f in feats])
    ax.axvline(a["flag_at"], color="k", linestyle="--", linewidth=1)
    ax.set_xlim(0.5, 1.0)
    comb = "n/a" if a.get("combined_auc") is None else f"{a['combined_auc']:.2f}"
    ax.set_xlabel("direction-free AUC real vs fake (0.5: no shortcut)")
    ax.set_title(f"Shortcut audit: combined AUC {comb}")
    return png_bytes(fig)


def train_audit(shards: str | Path, say=print, max_per_class: int = TRAIN_MAX_PER_CLASS, seed: int = 0) -> dict:
    """The metadata audit of the train split, for `dfp train`: one warning line when anything is flagged.
    Never stops training: a failure is recorded as {"error": ...}."""
    try:
        # in this process: forking one that has set up CUDA or process groups is unsafe
        a = run_audit(shards, max_per_class=max_per_class, splits=("train",), seed=seed, progress=False, workers=1)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    src = a.get("source_metadata") or {}
    flagged = a["flagged"] + [n for n in src.get("flagged", []) if n not in a["flagged"]]
    if flagged:
        say("warning: shortcut audit of the train split flags " + ", ".join(flagged)
            + f" (combined AUC {a['combined_auc']}): the classes differ in properties that are not the forgery; "
              "see config.json shortcut_audit or run dfp audit")
    return {k: a.get(k) for k in ("n", "combined_auc", "flagged", "remedies", "max_per_class", "seconds")} | {
        "features": {f["name"]: f["auc"] for f in a["features"]},
        "source_flagged": src.get("flagged", []), "source_combined_auc": src.get("combined_auc")}


def stats_headline(path: str | Path, params=None, max_per_class: int = STATS_MAX_PER_CLASS, seed: int = 0) -> dict:
    """The headline `dfp stats` shows, from at most `max_per_class` files per class: {"line", "combined_auc",
    "flagged"}, or {"skipped": why} where the input cannot be audited (e.g. one class only)."""
    try:
        a = run_audit(path, params, max_per_class=max_per_class, seed=seed, progress=False)
    except InputError as e:
        return {"skipped": str(e)}
    src = a.get("source_metadata") or {}
    return {"line": headline(a), "combined_auc": a["combined_auc"], "flagged": a["flagged"],
            "source_flagged": src.get("flagged", []), "max_per_class": max_per_class}
