"""DFDC: `dfdc_train_part_N/metadata.json` (file -> {label REAL/FAKE, split, original}) for the
videos next to it, train/val; `test/labels.csv` (`filename,label`, 1 = fake) for the test videos.
Group: a fake with its `original` (a real is its own original). Every sample is listed."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .common import Entry, csv_rows, join, not_listed, protocol_error, read_json, rel_to

LABELS = {"REAL": "real", "FAKE": "fake"}


def _part(path: Path, prefix: str) -> list[Entry]:
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise protocol_error(path, None, "expected a JSON object file -> {label, split, original}")
    out = []
    for name, info in meta.items():
        cls = LABELS.get(info.get("label")) if isinstance(info, dict) else None
        if cls is None:
            raise protocol_error(path, None, f"{name}: label must be REAL or FAKE, got {info!r}")
        original = info.get("original") if cls == "fake" else None
        out.append(Entry(prefix + name, cls, None, original or name, None, f"{prefix}metadata.json"))
    return out


def _test(path: Path, prefix: str) -> list[Entry]:
    out = []
    for n, row in csv_rows(path, ("filename", "label")):
        if row["label"] not in ("0", "1"):
            raise protocol_error(path, n, f"label {row['label']!r}: 1 (fake) or 0 (real)")
        cls = "fake" if row["label"] == "1" else "real"
        out.append(Entry(prefix + row["filename"], cls, "test", prefix + row["filename"], None,
                         f"{path.name} line {n}"))
    return out


def candidates(root: Path, files, opts):
    protocols, entries = set(), []
    for meta in sorted(root.glob("dfdc_train_part_*/metadata.json")):
        rel = rel_to(root, meta)
        protocols.add(rel)
        entries += _part(meta, rel.rsplit("/", 1)[0] + "/")
    labels = opts.protocol or root / "test" / "labels.csv"
    if labels.exists():
        rel = rel_to(root, labels)
        protocols.add(rel)
        entries += _test(labels, rel.rsplit("/", 1)[0] + "/" if rel and "/" in rel else "test/")
    if not entries:
        raise InputError(f"INPUT {root}: no dfdc_train_part_*/metadata.json or test/labels.csv found")
    return join(files, entries, not_listed("metadata.json or labels.csv", protocols))
