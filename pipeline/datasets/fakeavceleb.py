"""FakeAVCeleb: `meta_data.csv` (header `source,target1,target2,method,category,type,race,gender,path,`
with a trailing comma; rows carry a tenth value, the folder) or, without it, the four type folders
`{Real,Fake}Video-{Real,Fake}Audio/RACE/GENDER/ID/FILE.mp4`. The label is the video stream's
(FakeVideo-*) with --modality video, the audio track's (*-FakeAudio) with --modality audio, whose
samples are the mp4s' audio tracks. Split: --split, grouped by source identity; attack: the method."""
from __future__ import annotations

import csv
from pathlib import Path

from .sources import Candidate
from .common import Entry, beside, join, not_listed, protocol_error, read_text

TYPES = ("RealVideo-RealAudio", "RealVideo-FakeAudio", "FakeVideo-RealAudio", "FakeVideo-FakeAudio")
META = "meta_data.csv"
ALSO_READS = {"audio": frozenset({".mp4"})}


def _class(kind: str, modality: str) -> str:
    video, _, audio = kind.partition("-")
    return "fake" if (audio if modality == "audio" else video).startswith("Fake") else "real"


def _entries(path: Path, prefix: str, modality: str) -> list[Entry]:
    rows = csv.reader(read_text(path).splitlines())
    header = [h.strip() for h in next(rows, [])]
    if header[:9] != ["source", "target1", "target2", "method", "category", "type", "race", "gender", "path"]:
        raise protocol_error(path, 1, f"unexpected header {','.join(header)!r}")
    out = []
    for n, row in enumerate(rows, 2):
        if not any(x.strip() for x in row):
            continue
        if len(row) != 10 or row[5] not in TYPES:
            raise protocol_error(path, n, f"expected 10 values with a type among {', '.join(TYPES)}, got {row!r}")
        source, method, kind, name, folder = row[0], row[3], row[5], row[8], row[9].strip("/")
        parts = folder.split("/")
        inner = "/".join(parts[1:] if parts[0] not in TYPES else parts)
        cls = _class(kind, modality)
        out.append(Entry(f"{prefix}{inner}/{name}", cls, None, source, method if cls == "fake" else None,
                         f"{path.name} line {n}"))
    return out


def _from_folders(files, modality: str) -> tuple[list[Candidate], list[dict]]:
    cands, rejects = [], []
    for f in files:
        parts = f.rel.split("/")
        kind = next((p for p in parts if p in TYPES), None)
        if kind is None or len(parts) < 3:
            rejects.append({"source": f.rel, "reason": "not a sample: outside " + ", ".join(TYPES)})
        else:
            cands.append(Candidate(Path(f.path), f.rel, _class(kind, modality), parts[-2]))
    return cands, rejects


def candidates(root: Path, files, opts):
    modality = "audio" if opts.modality == "audio" else "video"
    path = opts.protocol or next((root / d / META for d in (".", "FakeAVCeleb_v1.2") if (root / d / META).exists()),
                                 None)
    if path is None:
        return _from_folders(files, modality)
    own, prefix = beside(root, path)
    return join(files, _entries(path, prefix, modality), not_listed(path.name, {own} if own else set()))
