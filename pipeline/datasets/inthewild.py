"""In-the-Wild (release_in_the_wild): `meta.csv` (`file,speaker,label`, label `spoof` or
`bona-fide`) lists every sample, files beside it. Split: --split, grouped by speaker."""
from __future__ import annotations

from pathlib import Path

from .common import Entry, beside, csv_rows, join, not_listed, protocol_error, protocol_path

LABELS = {"bona-fide": "real", "spoof": "fake"}


def candidates(root: Path, files, opts):
    path = protocol_path(root, opts.protocol, "meta.csv", "release_in_the_wild/meta.csv")
    own, prefix = beside(root, path)
    entries = []
    for n, row in csv_rows(path, ("file", "speaker", "label")):
        cls = LABELS.get(row["label"].lower())
        if cls is None:
            raise protocol_error(path, n, f"label {row['label']!r}: spoof or bona-fide")
        entries.append(Entry(prefix + row["file"], cls, None, row["speaker"], None, f"{path.name} line {n}"))
    return join(files, entries, not_listed(path.name, {own} if own else set()))
