"""Packing on many machines: `dfp shard INPUT PART --part K/N` prepares one share, `dfp shard --merge OUT PART...`
writes the shards; the result equals a one-machine `dfp shard INPUT OUT` byte for byte.

Where one shard ends depends on the prepared bytes (`--max-size`) and on which files fail to prepare, and with
`--faces` the split itself waits for every file's face step; so no part can know the final shard boundaries.
Every part therefore plans the whole input (the plan is deterministic), prepares the contiguous share K of the
plan's files (reading, checking, decoding, encoding, face crops: the costly work) into PART/samples.bin, and
records which part it is, the plan's digest and the options in PART/part.json, written last. The merge checks that
the parts are the N parts of one plan, then feeds their prepared samples, in the plan's order, through the writer
a one-machine build uses (`shards._ShardSink`, `shards._finish`): the same bytes in the same order. It copies;
the part folders are only read, and stay until you remove them.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from . import __version__, atomic, lock
from .errors import InputError, UsageError
from .formats import SPLITS
from .lock import LOCK_FILE
from .datasets.sources import Candidate

PART_FORMAT = "dfp-part/1"
PART_FILE = "part.json"
SAMPLES = "samples.bin"
_OWN = {PART_FILE, SAMPLES, f"{PART_FILE}.partial", f"{SAMPLES}.partial", LOCK_FILE}


def parse_part(text: str) -> tuple[int, int]:
    """`K/N` -> (K, N), K counted from 1."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--part {text!r}: give K/N, this machine's part K of N, e.g. 3/8") from None
    if n < 1 or not 1 <= k <= n:
        raise UsageError(f"--part {text!r}: K counts from 1 to N (1/{max(n, 1)} ... {max(n, 1)}/{max(n, 1)})")
    return k, n


def share(total: int, k: int, n: int) -> tuple[int, int]:
    """The contiguous range [lo, hi) of `total` items that part k of n holds."""
    return (k - 1) * total // n, k * total // n


def plan_digest(plan, params) -> str:
    """sha256 of everything that decides the shards: the options and the plan (files in order with their
    labels, the rejects found before packing), not where INPUT is mounted."""
    doc = {"params": asdict(params), "modality": plan.modality, "media_params": plan.media_params,
           "fractions": list(plan.fractions), "val_fraction": plan.val_fraction, "seed": plan.seed,
           "presplit": plan.presplit, "cands": [_cand_row(c) for c in plan.cands], "rejects": plan.rejects}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _cand_row(c: Candidate) -> list:
    return [c.source, c.cls, c.group, c.split, c.attack]


def _foreign_part_entry(folder: Path) -> str | None:
    """The first entry of a part folder that --part did not write, or None."""
    other = sorted(set(os.listdir(folder)) - _OWN)
    if other:
        return str(folder / other[0])
    doc = folder / PART_FILE
    if doc.exists() and _read_json(doc).get("format") != PART_FORMAT:
        return f"{doc} (not a {PART_FORMAT} file)"
    return None


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- one part
def pack_part(input_dir, part_dir, params, part: tuple[int, int], workers: int | None = None,
              progress: bool = True) -> dict:
    """Plan INPUT whole, prepare share K of N into PART_DIR; part.json is written last."""
    from .shards import _check_paths
    inp, folder = Path(input_dir), Path(part_dir)
    _check_paths(inp, folder, _foreign_part_entry)
    with lock.held(folder, "OUT", create=True):
        _check_paths(inp, folder, _foreign_part_entry)
        return _pack_part(inp, folder, params, part, workers, progress)


def _pack_part(inp: Path, folder: Path, params, part: tuple[int, int], workers, progress: bool) -> dict:
    from .shards import _choose_quality, _plan
    t0 = time.time()
    k, n = part
    (folder / PART_FILE).unlink(missing_ok=True)  # first: until the new one is written, this is no finished part
    plan = _plan(inp, params)
    _choose_quality(plan, params)  # over the whole plan, as a one-machine build chooses it
    lo, hi = share(len(plan.cands), k, n)
    rlo, rhi = share(len(plan.rejects), k, n)
    try:
        with atomic.replacing(folder / SAMPLES) as tmp:
            failed, digest = _write_records(plan, lo, hi, tmp, workers, progress)
    except OSError as e:
        raise InputError(f"cannot write part {k}/{n} under {folder} ({e.strerror or e}); "
                         "free some space or choose another folder, then run it again") from None
    doc = {"format": PART_FORMAT, "tool": f"dfp {__version__}", "part": k, "of": n, "plan": plan_digest(plan, params),
           "input": str(inp.resolve()), "params": asdict(params),
           "plan_info": {"modality": plan.modality, "media_params": plan.media_params,
                         "fractions": list(plan.fractions), "val_fraction": plan.val_fraction, "seed": plan.seed,
                         "presplit": plan.presplit, "files": len(plan.cands), "rejects": len(plan.rejects),
                         "quality_choice": plan.quality_choice},
           "range": [lo, hi], "rejects_range": [rlo, rhi], "rejects": plan.rejects[rlo:rhi],
           "samples": {"file": SAMPLES, "bytes": (folder / SAMPLES).stat().st_size, "sha256": digest},
           "failed": failed}
    atomic.write_json(folder / PART_FILE, doc)
    return {"part": k, "of": n, "files": hi - lo, "total": len(plan.cands), "failed": failed,
            "bytes": doc["samples"]["bytes"], "seconds": time.time() - t0, "modality": plan.modality}


def _write_records(plan, lo: int, hi: int, path: Path, workers, progress: bool) -> tuple[int, str]:
    """One record per planned file of the share, in plan order: a JSON header line (the candidate, and the
    reason it failed or its metadata and member sizes), then the member bytes. Returns (failed, sha256)."""
    from .shards import _prepare_one
    cands = plan.cands[lo:hi]
    workers = max(1, workers or os.cpu_count() or 1)
    pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
    jobs = ((c.path, plan.modality, plan.media_params) for c in cands)
    results = pool.imap(_prepare_one, jobs, chunksize=8) if pool else map(_prepare_one, jobs)
    if progress:
        from tqdm import tqdm
        results = tqdm(results, total=len(cands), unit="file", desc=f"preparing {plan.modality}", dynamic_ncols=True)
    sha, failed = hashlib.sha256(), 0
    try:
        with open(path, "wb", buffering=1 << 20) as f:
            for i, (c, (payload, meta, err)) in enumerate(zip(cands, results), lo):
                head = {"i": i, "c": _cand_row(c), "err": err}
                if err is None:
                    head |= {"meta": meta, "members": [[ext, len(data)] for ext, data in payload.items()]}
                failed += err is not None
                for b in (json.dumps(head).encode() + b"\n", *(payload or {}).values()):
                    f.write(b)
                    sha.update(b)
    finally:
        if pool:
            pool.terminate()
    return failed, sha.hexdigest()


def format_part_summary(s: dict) -> str:
    return (f"part {s['part']}/{s['of']}: prepared {s['files']} of {s['total']} {s['modality']} files "
            f"({s['bytes'] / 1e6:.1f} MB, {s['failed']} failed) in {s['seconds']:.1f}s; when all {s['of']} parts are "
            f"done: dfp shard --merge OUT PART_DIR...")


# ---------------------------------------------------------------- merge
def merge_parts(out_dir, part_dirs: list, progress: bool = True) -> dict:
    """The N part folders of one plan -> OUT, as `build_shards` would have written it; parts are only read."""
    out = Path(out_dir)
    docs = _read_parts([Path(p) for p in part_dirs])
    _check_out(out, [Path(p) for p in part_dirs])
    with lock.held(out, "OUT", create=True):
        _check_out(out, [Path(p) for p in part_dirs])
        return _merge(out, docs, progress)


def _read_parts(folders: list[Path]) -> list[tuple[Path, dict]]:
    """(folder, part.json) in part order, once they are shown to be the N parts of one plan, each unchanged."""
    docs = []
    for folder in folders:
        doc = _read_json(folder / PART_FILE)
        if doc.get("format") != PART_FORMAT:
            raise InputError(f"PART_DIR {folder} holds no finished part ({PART_FILE} missing or not {PART_FORMAT}): "
                             "run its dfp shard --part K/N (again) and give that folder")
        docs.append((folder, doc))
    first_folder, first = docs[0]
    for folder, doc in docs:  # the parts' preparation and the merge's writer must be the same code
        if doc.get("tool") != f"dfp {__version__}":
            raise InputError(f"PART_DIR {folder} was packed by {doc.get('tool')}, this is dfp {__version__}: "
                             "merge with the version that packed the parts, or pack them again")
    for folder, doc in docs[1:]:
        if doc["of"] != first["of"]:
            raise InputError(f"PART_DIR {folder} is part {doc['part']}/{doc['of']}, {first_folder} part "
                             f"{first['part']}/{first['of']}: give the N parts of one --part K/N run")
        if doc["params"] != first["params"]:
            name = next(k for k in doc["params"] if doc["params"][k] != first["params"].get(k))
            raise InputError(f"PART_DIR {folder} was packed with --{name.replace('_', '-')} {doc['params'][name]}, "
                             f"{first_folder} with {first['params'].get(name)}: the parts of one merge need the same "
                             "options")
        if doc["plan"] != first["plan"]:
            raise InputError(f"PART_DIR {folder} planned another input than {first_folder} (plan digests differ: the "
                             "input changed between the parts, or they read different inputs); pack all parts again")
    by_k = {}
    for folder, doc in docs:
        if doc["part"] in by_k:
            raise InputError(f"part {doc['part']}/{doc['of']} given twice: {by_k[doc['part']][0]} and {folder}")
        by_k[doc["part"]] = (folder, doc)
    n = first["of"]
    missing = [k for k in range(1, n + 1) if k not in by_k]
    if missing:
        raise InputError(f"part {missing[0]}/{n} missing ({len(missing)} of {n} parts missing): pack it with "
                         f"dfp shard INPUT PART_DIR --part {missing[0]}/{n} and give its folder too")
    ordered = [by_k[k] for k in range(1, n + 1)]
    for folder, doc in ordered:
        _check_samples(folder, doc)
    return ordered


def _check_samples(folder: Path, doc: dict) -> None:
    path = folder / SAMPLES
    try:
        with open(path, "rb") as f:
            sha = hashlib.file_digest(f, "sha256")
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"PART_DIR {folder}: cannot read {SAMPLES} ({e.strerror or e}); "
                         f"run its dfp shard --part {doc['part']}/{doc['of']} again") from None
    if size != doc["samples"]["bytes"] or sha.hexdigest() != doc["samples"]["sha256"]:
        raise InputError(f"{path}: changed after part {doc['part']}/{doc['of']} was written (checksum mismatch); "
                         "run that part again")


def _check_out(out: Path, folders: list[Path]) -> None:
    from .shards import _foreign_entry
    ro = out.resolve()
    for folder in folders:
        rf = folder.resolve()
        if ro == rf or rf in ro.parents or ro in rf.parents:
            raise InputError(f"OUT {out} and PART_DIR {folder} overlap: merge into a folder apart from the parts")
    if out.exists() and not out.is_dir():
        raise InputError(f"OUT {out} exists and is not a folder")
    if out.is_dir():
        foreign = _foreign_entry(out)
        if foreign is not None:
            raise InputError(f"OUT {out} holds {foreign}, which dfp shard did not write: give an empty or new "
                             "folder, or a previous dfp shard output")


def _merge(out: Path, docs: list[tuple[Path, dict]], progress: bool) -> dict:
    from .shards import BUILD_DIR, ShardParams, _finish, _Plan, _split
    t0 = time.time()
    first = docs[0][1]
    params = ShardParams(**first["params"])
    info = first["plan_info"]
    inp = Path(first["input"])
    records = _index_records(docs, inp)
    cands = [c for c, _ in records]
    rejects = [r for _, doc in docs for r in doc["rejects"]]
    plan = _Plan(info["modality"], info["media_params"], cands, rejects, tuple(info["fractions"]),
                 info["val_fraction"], info["seed"], info["presplit"])
    plan.quality_choice = info.get("quality_choice")
    if plan_digest(plan, params) != first["plan"] or len(rejects) != info["rejects"]:
        raise InputError(f"the parts in {', '.join(str(f) for f, _ in docs)} do not add up to the plan they "
                         "record; pack the parts again")
    failed = [{"source": c.source, "reason": loc} for c, loc in records if isinstance(loc, str)]
    where = {c.source: loc for c, loc in records if not isinstance(loc, str)}
    if plan.presplit is None:  # --faces: split the files that have a face, as a one-machine build does
        _split(plan, [c for c in cands if c.source in where])
    else:
        plan.cands = cands
    packed = _write_shards(out / BUILD_DIR, params, plan, where, progress)
    return _finish(out, first["input"], params, plan, (*packed, failed), t0)


def _index_records(docs: list[tuple[Path, dict]], inp: Path) -> list[tuple[Candidate, object]]:
    """Every planned file in plan order with where its prepared sample lies, (part folder, offset, meta,
    members), or the reason it failed; read from the record headers, skipping the member bytes."""
    out = []
    for folder, doc in docs:
        lo, hi = doc["range"]
        with open(folder / SAMPLES, "rb") as f:
            for i in range(lo, hi):
                head = json.loads(f.readline())
                if head["i"] != i:
                    raise InputError(f"{folder / SAMPLES}: record {head['i']} where {i} belongs; run part "
                                     f"{doc['part']}/{doc['of']} again")
                source, cls, group, split, attack = head["c"]
                c = Candidate(inp / source, source, cls, group, split, attack)
                if head["err"] is not None:
                    out.append((c, head["err"]))
                    continue
                out.append((c, (folder, f.tell(), head["meta"], head["members"])))
                f.seek(sum(size for _, size in head["members"]), os.SEEK_CUR)
    return out


def _write_shards(build: Path, params, plan, where: dict, progress: bool) -> tuple[list, dict]:
    """The plan's samples, read from the parts in shard order, through the one-machine build's writer."""
    from .shards import _ShardSink, sort_rows
    shutil.rmtree(build, ignore_errors=True)
    for s in SPLITS:
        (build / s).mkdir(parents=True, exist_ok=True)
    sink, files, done = _ShardSink(build, params), {}, False
    cands = plan.cands
    if progress:
        from tqdm import tqdm
        cands = tqdm(cands, unit="sample", desc="merging", dynamic_ncols=True)
    try:
        for c in cands:
            if c.source not in where:  # failed to prepare: a reject
                continue
            folder, offset, meta, members = where[c.source]
            f = files.get(folder) or files.setdefault(folder, open(folder / SAMPLES, "rb"))
            f.seek(offset)
            sink.write(c, {ext: f.read(size) for ext, size in members}, meta)
        sink.close()
        done = True
    except OSError as e:
        raise InputError(f"cannot write the shards under {build.parent} ({e.strerror or e}); "
                         "free some space or choose another OUT, then run the merge again") from None
    finally:
        sink.abort()
        for f in files.values():
            f.close()
        if not done:
            shutil.rmtree(build, ignore_errors=True)
    return sort_rows(sink.rows), sink.counts
