"""`--protocol` CSV `path,label[,split][,group][,attack]`, paths relative to INPUT; every sample is listed."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..sources import SPLIT_NAMES
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
    rel = row["path"].replace("\\", "/")
    return Entry(rel[2:] if rel.startswith("./") else rel, cls, split, row.get("group") or None,
                 row.get("attack") or None, f"{path.name} line {n}")


def candidates(root: Path, files, opts):
    if opts.protocol is None:
        raise InputError("--dataset table needs --protocol CSV (header path,label[,split][,group][,attack])")
    path = opts.protocol
    entries = [_entry(path, n, row, opts.class_map) for n, row in csv_rows(path, ("path", "label"))]
    own = rel_to(root, path)
    return join(files, entries, not_listed(path.name, {own} if own else set()))
