"""`dfp predict`: raw files in, one CSV row per file out, using the checkpoint's threshold.

Files are prepared exactly as the shard builder prepares them (`media.prepare`) and then go
through the loader eval path `dfp evaluate` uses (same backend, same options), held in memory
a chunk at a time: the threshold tuned on evaluation scores then meets the same scores here.
"""
from __future__ import annotations

import csv
from pathlib import Path

from . import atomic, checkpoint
from .engine import amp_setup, predict
from .errors import InputError, MediaError
from .evaluate import eval_backend, eval_options
from .formats import payload_exts, source_text
from .loaders import make_loader, resolve_device
from .loaders.memory import MemoryIndex
from .media import encoding, prepare
from .shards import storage_controls
from .datasets.sources import EXTENSIONS, walk_files

CHUNK = 256  # files prepared and held in memory at once


def collect_files(paths: list[Path]) -> list[tuple[Path, str]]:
    """(file, "") for every file to score, and (path, reason) for what a folder holds that cannot be a file
    (dangling links, link loops, special files): folders are walked as `dfp shard` walks INPUT (links followed,
    loops stopped), each in sorted order; the paths keep the order they were given in."""
    out: list[tuple[Path, str]] = []
    for p in paths:
        if p.is_dir():
            files, rejects = walk_files(p)
            found = [(p / f.rel, "") for f in files] + [(p / r["source"], r["reason"]) for r in rejects]
            out += sorted(found, key=lambda x: x[0].relative_to(p).as_posix())
        elif p.exists():
            out.append((p, ""))
        else:
            raise InputError(f"{p} does not exist")
    return out


class _Scorer:
    """One checkpoint's model, backend and preparation settings, applied to chunks of files."""

    def __init__(self, ckpt: dict, device, backend: str, batch_size: int, workers: int, limits: dict | None = None,
                 path="the checkpoint"):
        pre = ckpt["preprocess"]
        self.modality, self.device = ckpt["modality"], device
        self.backend = eval_backend(ckpt, backend)
        self.opts = eval_options(ckpt, batch_size, workers)
        self.model = checkpoint.model_from_checkpoint(ckpt, device, path)
        self.amp_dtype, _ = amp_setup(device, "auto")
        # the shard builder's defaults stand in for values a checkpoint may lack
        self.params = {"max_side": pre.get("max_side") or 512, "sample_rate": pre.get("sample_rate") or 16000,
                       "frames": pre.get("frames") or 16, "faces": pre.get("faces"), **storage_controls(pre),
                       **(limits or {})}
        self.exts = payload_exts(self.modality, self.params["frames"], encoding(self.params, self.modality).ext)

    def _prepare(self, path: Path) -> list[bytes]:
        if path.suffix.lower() not in EXTENSIONS[self.modality]:
            raise MediaError(f"unsupported extension for a {self.modality} model")
        payload, _ = prepare(path, self.modality, self.params)
        return [payload[e] for e in self.exts]

    def score(self, files: list[Path], on_file=lambda: None) -> list[tuple[float | None, str]]:
        """(score, "") or (None, error) per file, in order."""
        out: list[tuple[float | None, str]] = [(None, "")] * len(files)
        samples, where = [], []
        for j, f in enumerate(files):
            try:
                samples.append((self._prepare(f), {"source": str(f)}))
                where.append(j)
            except MediaError as e:
                out[j] = (None, str(e))
            except Exception as e:  # a decoder bug on one odd file must not cost the other files their rows
                out[j] = (None, f"corrupt: {type(e).__name__}: {e}".strip().splitlines()[0])
            on_file()
        if samples:
            index = MemoryIndex(samples, self.modality, self.exts, self.params["sample_rate"])
            loader = make_loader(None, "predict", self.backend, self.device, self.opts, index=index)
            keys, _, scores, _ = predict(self.model, loader, self.device, self.amp_dtype)
            got = dict(zip(keys, scores))
            for i, j in enumerate(where):
                s = got.get(str(i))
                out[j] = (float(s), "") if s is not None else (None, f"corrupt: the {self.backend} loader cannot decode it")
        return out


def _write_csv(out: Path, rows: list[tuple[str, str, str, str]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "score", "label", "error"])
        w.writerows([source_text(cell) for cell in row] for row in rows)  # a name that is not UTF-8, escaped


def predict_files(ckpt_path, paths: list[Path], out: Path, device="auto", batch_size=32, backend="auto",
                  workers=2, chunk=CHUNK, log=print, max_pixels: int | None = None,
                  max_seconds: float | None = None) -> dict:
    """max_pixels, max_seconds: bounds on what is decoded (None: the defaults, as `dfp shard`'s; 0: none)."""
    device = resolve_device(device)
    ckpt = checkpoint.load(ckpt_path, map_location=device, need=checkpoint.MODEL)
    thr = checkpoint.stored_threshold(ckpt)["threshold"]
    found = collect_files(paths)
    files = [f for f, why in found if not why]
    if not found:
        raise InputError("no files found under " + ", ".join(str(p) for p in paths))
    limits = {k: v for k, v in (("max_pixels", max_pixels), ("max_seconds", max_seconds)) if v is not None}
    scorer = _Scorer(ckpt, device, backend, batch_size, workers, limits, ckpt_path)
    from tqdm import tqdm
    scored: dict[Path, tuple[str, str, str]] = {}
    with tqdm(total=len(files), unit="file", desc="predict", dynamic_ncols=True) as bar:
        for start in range(0, len(files), chunk):
            part = files[start:start + chunk]
            for f, (s, err) in zip(part, scorer.score(part, lambda: bar.update(1))):
                scored[f] = ("", "", err) if s is None else (repr(s), "fake" if s >= thr else "real", "")
    rows = [(str(f), *(scored[f] if not why else ("", "", why))) for f, why in found]
    _write_csv(Path(out), rows)
    n_fake = sum(r[2] == "fake" for r in rows)
    n_err = sum(bool(r[3]) for r in rows)
    log(f"{len(rows)} files: {n_fake} fake, {len(rows) - n_fake - n_err} real, {n_err} unreadable "
        f"(threshold {thr:.4f}, {scorer.backend} loader); written {out}")
    return {"files": len(rows), "fake": n_fake, "errors": n_err, "backend": scorer.backend}
