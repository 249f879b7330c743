"""`--protocol` CSV `path,label[,split][,group][,attack]`, paths relative to INPUT; every sample is listed."""
from __future__ import annotations

import posixpath
from pathlib import Path

from ..errors import InputError
from .sources import SPLIT_NAMES
from .common import Entry, csv_rows, join, not_listed, protocol_error, rel_to


def _entry(path: Path, n: int, row: dict, class_map: dict) -> Entry:
    cls = class_map.get(row["label"].lower())
    if cls is None:
        raise protocol_error(path, n, f"label {row['label']!r} is neither real nor fake (map it with --class-map)")
    split = row.get("split") or None
    if split is not None:
        if split.lower() not in SPLIT_NAMES:
            raise protocol_error(path, n, f"split {split!r}: use train, val or test")
        split = SPLIT_NAMES[split.lower()]
    if not row["path"]:
        raise protocol_error(path, n, "empty path")
    return Entry(_normal(row["path"].replace("\\", "/")), cls, split, row.get("group") or None,
                 row.get("attack") or None, f"{path.name} line {n}")


def _normal(rel: str) -> str:
    """`./a.jpg` and `imgs/../a.jpg` name `a.jpg`; a path that leaves INPUT keeps its `..` (see `_outside`)."""
    return rel if rel.startswith("/") else posixpath.normpath(rel)


def _outside(root: Path, e: Entry) -> Entry | dict:
    """An absolute path inside INPUT is made relative; one elsewhere, or a `../` path, is a reject that says so
    (the file may well exist: it is not missing, it is not under INPUT)."""
    rel = rel_to(root, Path(e.rel)) if e.rel.startswith("/") else e.rel
    if rel is not None and rel != ".." and not rel.startswith("../"):
        return e._replace(rel=rel)
    return {"source": e.rel, "reason": f"outside INPUT: listed in {e.where}, but only files under INPUT {root} "
                                       "are packed (move or link it there)"}


_FIELDS = {"cls": "label", "split": "split", "group": "group", "attack": "attack"}


def _conflict(a: Entry, b: Entry) -> str | None:
    differ = [f for f in _FIELDS if getattr(a, f) != getattr(b, f)]
    if not differ:
        return None
    said = lambda e: ", ".join(f"{_FIELDS[f]} {getattr(e, f) or '(empty)'}" for f in differ)
    return f"conflicting rows: {a.where} ({said(a)}) and {b.where} ({said(b)}); keep one of them"


def _settle(root: Path, entries: list[Entry]) -> tuple[list[Entry], list[dict]]:
    """One entry per listed path: rows outside INPUT and paths listed with conflicting labels become rejects
    (the path's first conflicting pair named); repeats of an identical row are dropped."""
    kept: dict[str, Entry] = {}
    rejects: dict[str, dict] = {}
    for e in entries:
        e = _outside(root, e)
        if isinstance(e, dict):
            rejects.setdefault(e["source"], e)
            continue
        if e.rel in rejects:
            continue
        first = kept.setdefault(e.rel, e)
        why = _conflict(first, e)
        if why:
            rejects[e.rel] = {"source": e.rel, "reason": why}
            del kept[e.rel]
    return list(kept.values()), list(rejects.values())


def candidates(root: Path, files, opts):
    if opts.protocol is None:
        raise InputError("--dataset table needs --protocol CSV (header path,label[,split][,group][,attack])")
    path = opts.protocol
    rows = csv_rows(path, ("path", "label"))
    entries, rejects = _settle(root, [_entry(path, n, row, opts.class_map) for n, row in rows])
    own = rel_to(root, path)
    settled = {r["source"] for r in rejects}
    unlisted = not_listed(path.name, {own} if own else set())
    cands, more = join([f for f in files if f.rel not in settled], entries, unlisted)
    return cands, rejects + more
