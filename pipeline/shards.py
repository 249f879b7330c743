"""Pack an input folder into class-labeled WebDataset shards (`dfp-shards/1`); verify.py checks them afterwards.

Media preparation runs in a process pool; writing happens in the main process in a fixed
order (split, class, source), so the bytes do not depend on worker count or timing.
The build happens under OUT/.building and is moved into place at the end; the manifest is
written last, so a folder without a manifest is never mistaken for a complete one. OUT must be empty, new
or dfp's own output, and one build at a time holds its lock (lock.py).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__, atomic, lock
from .config import ShardParams
from .errors import InputError, MediaError
from .lock import LOCK_FILE
from .formats import (CLASSES, FORMAT, MANIFEST, REJECTS, SPLITS, encode_sample, index_text, payload_exts,
                      sample_key, write_manifest)
from .tarwriter import ShardWriter
from .media import prepare
from .sampling import limit_per_class
from .datasets import DatasetOptions, discover
from .datasets.sources import Candidate, parse_class_map, parse_split
from .splits import empty_class_warnings, resolve_splits

BUILD_DIR = ".building"
SPILL_DIR = "faces"  # under BUILD_DIR: --faces crops between the face step and the split
DEFAULT_MAX_SIDE = {"image": 512, "video": 256, "audio": 0}


# --debias: what each storage control left unset becomes (video frames: "square"); OFF is the old packing
DEBIAS = {"reencode": True, "chroma": "420", "resize_rule": "crop", "trim_silence": True, "fps": 8.0}
OFF = {"reencode": False, "chroma": None, "resize_rule": "fit", "trim_silence": False, "fps": None}
CONTROLS = (*OFF, "jpeg_quality", "image_codec")
# --debias without --jpeg-quality (images stored as JPEG): one quality for the whole build, no finer than nearly
# all JPEG inputs were compressed, so that their earlier compression no longer shows after the re-encoding (a real
# JPEG stored finer than it was compressed has fewer bytes per pixel than a lossless fake; Grommelt et al. 2024,
# "Fake or JPEG?": compress all alike). Read from the headers of at most `most` inputs
# spread over the plan; the `percentile` (lower) of their estimates, both classes together, within low..high.
DEBIAS_QUALITY = {"percentile": 5, "low": 50, "high": 95, "most": 5000}


def storage_controls(p: dict) -> dict:
    """The storage controls of a manifest's `params` or a checkpoint's `preprocess`, as `media.prepare` takes
    them; ones the packer did not record (older shards) are off."""
    out = {k: (p.get(k) if p.get(k) is not None else v) for k, v in OFF.items()}
    return out | {"jpeg_quality": p.get("jpeg_quality"), "image_codec": p.get("image_codec") or "jpeg"}


def _resolve_controls(params: ShardParams, modality: str) -> dict:
    """The controls this run packs with: given ones, else --debias's, else off; the quality by modality."""
    given = {k: getattr(params, k) for k in OFF}
    out = {k: v if v is not None else (DEBIAS[k] if params.debias else OFF[k]) for k, v in given.items()}
    if params.debias and params.resize_rule is None and modality == "video":
        out["resize_rule"] = "square"  # a centre crop of a full-HD frame at its own scale would miss the scene
    from .media.image import JPEG_QUALITY
    from .media.video import JPEG_QUALITY as FRAME_QUALITY
    default = FRAME_QUALITY if modality == "video" else JPEG_QUALITY
    out["jpeg_quality"] = params.jpeg_quality or (default if modality != "audio" else None)
    out["image_codec"] = params.image_codec
    if params.faces:  # face crops are one size and one quality already (--face-size, --face-quality)
        out |= {k: OFF[k] for k in ("reencode", "chroma", "resize_rule", "fps")} | {"jpeg_quality": params.face_quality}
    return out


def _prepare_one(args):
    """(payload, meta, None) or (None, None, reason). The payload holds the very bytes that were checked
    (a kept JPEG's come back from the worker rather than being read again), so a file rewritten while
    packing can only be packed as it was when checked."""
    path, modality, media_params = args
    try:
        payload, meta = prepare(path, modality, media_params)
        return payload, meta, None
    except MediaError as e:
        return None, None, str(e)
    except Exception as e:  # a decoder bug on one odd file must not stop the run
        return None, None, f"corrupt: {type(e).__name__}: {e}"


def _limit_per_class(cands: list[Candidate], limit: int | None, seed: int) -> tuple[list[Candidate], list[dict]]:
    if not limit:
        return cands, []
    labels = np.array([CLASSES.index(c.cls) for c in cands], np.int8)
    chosen = np.zeros(len(cands), bool)
    chosen[limit_per_class(labels, limit, seed, stream=7)] = True
    by_class = np.argsort(labels, kind="stable")  # all reals, then all fakes, each in input order
    kept = [cands[i] for i in by_class if chosen[i]]
    rejects = [{"source": cands[i].source, "reason": "over --max-samples-per-class"} for i in by_class if not chosen[i]]
    return kept, rejects


def _check_paths(inp: Path, out: Path, foreign=None) -> None:
    """OUT is empty, absent or a previous dfp build (`foreign` judges which, for a part folder: parts.py):
    nothing of the user's is replaced by shards."""
    if not inp.exists():
        raise InputError(f"INPUT {inp} does not exist")
    ri, ro = inp.resolve(), out.resolve()
    if ro == ri or ri in ro.parents:
        raise InputError(f"OUT {out} is inside INPUT {inp}: choose an output folder outside the input")
    if ro in ri.parents:
        raise InputError(f"OUT {out} contains INPUT {inp}: a build would replace the input; "
                         "choose an output folder outside the input")
    if out.exists() and not out.is_dir():
        raise InputError(f"OUT {out} exists and is not a folder")
    if out.is_dir():
        foreign = (foreign or _foreign_entry)(out)
        if foreign is not None:
            raise InputError(f"OUT {out} holds {foreign}, which dfp shard did not write: give an empty or new "
                             "folder, or a previous dfp shard output")


# what a build leaves in OUT (a kill -9 may leave the atomic writes' temporary files too)
_OWN_FILES = {MANIFEST, REJECTS, f"{MANIFEST}.partial", f"{REJECTS}.partial", BUILD_DIR, LOCK_FILE}
_SHARD_FILE = re.compile(r"^(real|fake)-\d{6}\.(tar|idx)(\.partial)?$")


def _foreign_entry(out: Path) -> str | None:
    """The first entry of OUT that is not dfp's own output, or None."""
    names = set(os.listdir(out))
    other = sorted(names - _OWN_FILES - set(SPLITS))
    if other:
        return str(out / other[0])
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            ours = json.loads(manifest.read_text(encoding="utf-8")).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            return f"{manifest} (not a {FORMAT} manifest)"
    elif REJECTS in names and BUILD_DIR not in names:
        return str(out / REJECTS)
    for s in sorted(names & set(SPLITS)):
        d = out / s
        if d.is_symlink() or not d.is_dir():
            return str(d)
        for entry in sorted(d.iterdir()):
            if not (_SHARD_FILE.match(entry.name) and entry.is_file() and not entry.is_symlink()):
                return str(entry)
    return None


def _face_settings(params: ShardParams, modality: str) -> dict | None:
    if not params.faces:
        return None
    if modality == "audio":
        raise InputError("--faces applies to image and video input; this input is audio")
    from .media.faces import settings
    return settings(params.face_margin, params.face_size, params.face_quality)


def build_shards(input_dir: str | os.PathLike, out_dir: str | os.PathLike, params: ShardParams,
                 workers: int | None = None, progress: bool = True, log=print) -> dict:
    """INPUT -> OUT: plan (discover, limit, split), pack under OUT/.building, then move into place and write the
    manifest last, so OUT never holds a manifest that disagrees with the shards beside it."""
    inp, out = Path(input_dir), Path(out_dir)
    _check_paths(inp, out)
    with lock.held(out, "OUT", create=True):
        _check_paths(inp, out)  # again, now that no other build can change OUT
        return _build(inp, out, params, workers, progress)


def _build(inp: Path, out: Path, params: ShardParams, workers: int | None, progress: bool) -> dict:
    t0 = time.time()
    plan = _plan(inp, params)
    _choose_quality(plan, params)
    build = out / BUILD_DIR
    shard_rows, counts, failed = _pack(plan, build, params, workers, progress)
    return _finish(out, str(inp.resolve()), params, plan, (shard_rows, counts, failed), t0)


def _finish(out: Path, input_path: str, params: ShardParams, plan: "_Plan", packed: tuple, t0: float) -> dict:
    """Move the shards built under OUT/.building into place, then rejects.jsonl, then the manifest; the summary.
    `packed`: what `_pack` returns. A merge of parts (parts.py) ends here too."""
    shard_rows, counts, failed = packed
    build = out / BUILD_DIR
    rejects = sorted(plan.rejects + failed, key=lambda r: r["source"])
    _move_into_place(build, out)
    atomic.write_text(out / REJECTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    write_manifest(out, _manifest(input_path, params, plan, shard_rows, counts, len(rejects)))
    # removed after the manifest: until then a rerun sees an interrupted build (.building), not foreign files
    shutil.rmtree(build, ignore_errors=True)
    seconds = time.time() - t0
    packed = sum(sum(v.values()) for v in counts.values())
    return {"packed": packed, "rejected": len(rejects), "reasons": dict(Counter(_reason_kind(r["reason"]) for r in rejects)),
            "shards": len(shard_rows), "bytes": sum(r["bytes"] for r in shard_rows), "seconds": seconds,
            "splits": counts, "read": len(plan.cands), "modality": plan.modality,
            "files_per_s": len(plan.cands) / max(seconds, 1e-9),  # files opened: not rejects found before packing
            "jpeg_quality_choice": plan.quality_choice,
            "warnings": empty_class_warnings(counts, plan.fractions, plan.presplit, plan.cands,
                                             any(c.group for c in plan.cands))}


@dataclass
class _Plan:
    modality: str
    media_params: dict
    cands: list
    rejects: list
    fractions: tuple
    val_fraction: float
    seed: int
    presplit: bool | None = None  # None: not split yet (--faces splits the files that have a face, in _pack)
    quality_choice: dict | None = None  # how --debias chose the JPEG quality (`_choose_quality`)


def _plan(inp: Path, params: ShardParams) -> _Plan:
    """What will be packed, in shard order (split, class, source), and what is rejected before packing
    (`dfp stats INPUT` previews this). With --faces the split waits for the face step (`_pack`)."""
    fractions = parse_split(params.split)
    disc = discover(params.dataset, inp, params.modality, _dataset_options(params))
    modality = disc.modality
    media_params = {"max_side": params.max_side or DEFAULT_MAX_SIDE[modality], "sample_rate": params.sample_rate,
                    "frames": params.frames, "check": params.check, "faces": _face_settings(params, modality),
                    "max_pixels": params.max_pixels, "max_seconds": params.max_seconds,
                    **_resolve_controls(params, modality)}
    cands, over = _limit_per_class(disc.candidates, params.max_samples_per_class, params.seed)
    plan = _Plan(modality, media_params, cands, disc.rejects + over, fractions, params.val_fraction, params.seed)
    if not media_params["faces"]:
        _split(plan, cands)
    return plan


def _choose_quality(plan: _Plan, params: ShardParams) -> None:
    """--debias, images, JPEG storage and no --jpeg-quality: set the plan's one quality from the JPEG inputs'
    quantisation tables (DEBIAS_QUALITY), read in plan order in this process, so the choice is the same
    whatever --workers; 95 (the highest allowed) when no input is a JPEG."""
    m = plan.media_params
    if not (params.debias and params.jpeg_quality is None and plan.modality == "image" and not m["faces"]
            and m["image_codec"] == "jpeg"):
        return
    rule, n = DEBIAS_QUALITY, len(plan.cands)
    pick = np.unique(np.linspace(0, n - 1, min(n, rule["most"])).round().astype(int))
    est = sorted(q for q in (_header_quality(plan.cands[i].path) for i in pick) if q is not None)
    low = est[int(rule["percentile"] / 100 * (len(est) - 1))] if est else rule["high"]
    quality = int(min(rule["high"], max(rule["low"], low)))
    m["jpeg_quality"] = quality
    plan.quality_choice = {
        "quality": quality, "read": len(pick), "jpeg_inputs": len(est),
        "estimates": {"min": est[0], "max": est[-1]} if est else None,
        "rule": f"the {rule['percentile']}th percentile (lower) of the JPEG inputs' quality estimates "
                f"(quantisation tables), both classes together, within {rule['low']}-{rule['high']}; "
                f"{rule['high']} when none is a JPEG"}


def _header_quality(path) -> float | None:
    """The JPEG quality estimate of one input from its quantisation tables (audit/image.py), or None for a file
    that is not a readable JPEG (the packer rejects or re-encodes it as usual)."""
    from PIL import Image
    from .audit.image import jpeg_quality
    try:
        with Image.open(path) as im:
            return jpeg_quality(im.quantization) if im.format == "JPEG" and im.quantization else None
    except Exception:  # unreadable here is the packer's to reject, with its reason
        return None


def _split(plan: _Plan, cands: list) -> None:
    """Split `cands` and make them the plan's samples, in shard order (split, class, source)."""
    plan.presplit = resolve_splits(cands, plan.fractions, plan.val_fraction, plan.seed)
    order = {s: i for i, s in enumerate(SPLITS)}
    cands.sort(key=lambda c: (order[c.split], CLASSES.index(c.cls), c.source))
    plan.cands = cands


def _pack(plan: _Plan, build: Path, params: ShardParams, workers: int | None, progress: bool):
    """Prepare the candidates in worker processes and write them, in order, into one shard run per (split, class).
    Returns the shard rows, the per-split class counts and the files that failed to prepare."""
    shutil.rmtree(build, ignore_errors=True)
    for s in SPLITS:
        (build / s).mkdir(parents=True, exist_ok=True)
    sink = _ShardSink(build, params)
    workers = max(1, workers or os.cpu_count() or 1)
    pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
    failed, done = [], False
    bar = None
    try:
        if plan.presplit is None:
            results = _faces_first(plan, build / SPILL_DIR, pool, progress, failed)
        else:
            jobs = ((c.path, plan.modality, plan.media_params) for c in plan.cands)
            results = pool.imap(_prepare_one, jobs, chunksize=8) if pool else map(_prepare_one, jobs)
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(plan.cands), unit="file", desc=f"packing {plan.modality}", dynamic_ncols=True)
        for c, (payload, meta, err) in zip(plan.cands, results):
            if bar:
                bar.update(1)
            if err is not None:
                failed.append({"source": c.source, "reason": err})
                continue
            sink.write(c, payload, meta)
        sink.close()
        done = True
    except OSError as e:  # _prepare_one catches its read errors: this one is writing under OUT (or spilling crops)
        raise InputError(f"cannot write the shards under {build.parent} ({e.strerror or e}); "
                         "free some space or choose another OUT, then run dfp shard again") from None
    finally:
        sink.abort()
        if bar:
            bar.close()
        if pool:
            pool.terminate()
        if not done:  # nothing of an unfinished build is reused (the next build starts afresh): free its space
            shutil.rmtree(build, ignore_errors=True)
    return sort_rows(sink.rows), sink.counts, failed


def sort_rows(rows: list[dict]) -> list[dict]:
    """Manifest rows in shard order (split, class, path)."""
    order = {s: i for i, s in enumerate(SPLITS)}
    return sorted(rows, key=lambda r: (order[r["split"]], CLASSES.index(r["class"]), r["path"]))


def _faces_first(plan: _Plan, spill: Path, pool, progress: bool, failed: list):
    """--faces: run the face step on every candidate first, then split the files that have a face, so that
    faceless files cannot empty a split of a class. The crops wait in files under `spill` (one per sample,
    written by the worker), never all in memory; returns the prepared results in the plan's new order."""
    spill.mkdir()
    jobs = ((c.path, plan.modality, plan.media_params, str(spill / f"{i:08d}")) for i, c in enumerate(plan.cands))
    results = pool.imap(_prepare_to_file, jobs, chunksize=8) if pool else map(_prepare_to_file, jobs)
    if progress:
        from tqdm import tqdm
        results = tqdm(results, total=len(plan.cands), unit="file", desc="finding faces", dynamic_ncols=True)
    kept = {}
    for c, (file, meta, err) in zip(plan.cands, results):
        if err is None:
            kept[c.source] = (file, meta)
        else:
            failed.append({"source": c.source, "reason": err})
    _split(plan, [c for c in plan.cands if c.source in kept])
    return ((_read_spilled(kept[c.source][0]), kept[c.source][1], None) for c in plan.cands)


def _prepare_to_file(args):
    """_prepare_one, with the payload written to the file named by args[3]: (that file, meta, None) or (None, None, err)."""
    path, modality, media_params, file = args
    payload, meta, err = _prepare_one((path, modality, media_params))
    if err is not None:
        return None, None, err
    with open(file, "wb") as f:
        f.write(json.dumps([[ext, len(data)] for ext, data in payload.items()]).encode() + b"\n")
        for data in payload.values():
            f.write(data)
    return file, meta, None


def _read_spilled(file: str) -> dict[str, bytes]:
    """The payload `_prepare_to_file` wrote, read back and its file removed (the disk holds each crop once)."""
    with open(file, "rb") as f:
        members = json.loads(f.readline())
        payload = {ext: f.read(size) for ext, size in members}
    os.unlink(file)
    return payload


class _ShardSink:
    """One ShardWriter per (split, class) run of samples; finished shards get their .idx and a manifest row."""

    def __init__(self, build: Path, params: ShardParams):
        self.build, self.params = build, params
        self.writer, self.current = None, None
        self.rows: list[dict] = []
        self.counts = {s: {c: 0 for c in CLASSES} for s in SPLITS}

    def write(self, c, payload: dict, meta: dict) -> None:
        if (c.split, c.cls) != self.current:
            self.close()
            self.current = (c.split, c.cls)
            self.writer = ShardWriter(str(self.build / c.split / f"{c.cls}-%06d.tar.partial"),
                                      maxcount=self.params.max_count, maxsize=self.params.max_size, post=self._finish)
        self.writer.write(encode_sample(sample_key(c.source), c.source, c.cls, payload, _labels(c) | meta))
        self.counts[c.split][c.cls] += 1

    def _finish(self, fname: str, digest: str, samples: list) -> None:
        partial = Path(fname)
        final = partial.with_name(partial.name[: -len(".partial")])
        atomic.write_text(final.with_suffix(".idx"), index_text(samples))
        os.replace(partial, final)
        split, cls = final.parent.name, final.name.split("-")[0]
        self.rows.append({"path": final.relative_to(self.build).as_posix(), "split": split, "class": cls,
                          "samples": len(samples), "bytes": final.stat().st_size, "sha256": digest})

    def close(self) -> None:
        if self.writer:
            self.writer.close()
            self.writer = None

    def abort(self) -> None:
        if self.writer:
            self.writer.abort()
            self.writer = None


def _move_into_place(build: Path, out: Path) -> None:
    # the old manifest goes first, so an interruption here never leaves one that disagrees with the shards
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    for s in SPLITS:
        old = out / s
        if old.exists():
            shutil.rmtree(old)
        os.replace(build / s, old)


def _manifest(input_path: str, params: ShardParams, plan: _Plan, shard_rows: list, counts: dict, rejected: int) -> dict:
    modality = plan.modality
    p = asdict(params)
    p.update(modality=modality, max_side=plan.media_params["max_side"], input=input_path,
             face_step=plan.media_params["faces"], **{k: plan.media_params[k] for k in CONTROLS})
    if plan.quality_choice:
        p["jpeg_quality_choice"] = plan.quality_choice
    return {"format": FORMAT, "tool": f"dfp {__version__}", "modality": modality, "classes": list(CLASSES),
            "payload": payload_exts(modality, params.frames, _image_ext(plan.media_params)),
            "sample_rate": params.sample_rate if modality == "audio" else None,
            "frames": params.frames if modality == "video" else None,
            "splits": counts, "shards": shard_rows, "rejected": rejected, "params": p}


def _image_ext(media_params: dict) -> str:
    from .media import encoding
    return encoding(media_params, "image").ext


def _dataset_options(params: ShardParams) -> DatasetOptions:
    """How `params.dataset`'s layout reads INPUT, from the shard parameters."""
    return DatasetOptions(protocol=Path(params.protocol) if params.protocol else None,
                          class_map=parse_class_map(params.class_map), group_depth=params.group_depth,
                          compression=params.ff_compression)


def _labels(c: Candidate) -> dict:
    """What KEY.json records beside source and class: the split unit and the attack, where known."""
    out = {}
    if c.group is not None:
        out["group"] = c.group
    if c.attack is not None:
        out["attack"] = c.attack
    return out


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0]


def format_summary(s: dict) -> str:
    lines = [f"packed {s['packed']} {s['modality']} samples into {s['shards']} shards "
             f"({s['bytes'] / 1e6:.1f} MB) in {s['seconds']:.1f}s ({s['files_per_s']:.0f} files read/s)"]
    for split, c in s["splits"].items():
        lines.append(f"  {split:5s}: real {c['real']:>7d}  fake {c['fake']:>7d}")
    if s["rejected"]:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(s["reasons"].items()))
        lines.append(f"rejected {s['rejected']} files ({why}); see rejects.jsonl")
    else:
        lines.append("rejected 0 files")
    choice = s.get("jpeg_quality_choice")
    if choice:
        seen = choice["estimates"]
        lines.append(f"--debias: every image stored at JPEG quality {choice['quality']} ("
                     + (f"{choice['jpeg_inputs']} JPEG inputs estimated at {seen['min']:.0f}-{seen['max']:.0f}; "
                        if seen else "no JPEG input; ") + choice["rule"] + ")")
    lines += s.get("warnings", [])
    return "\n".join(lines)
