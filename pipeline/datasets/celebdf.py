"""Celeb-DF (v1/v2): `Celeb-real/`, `YouTube-real/` real, `Celeb-synthesis/` fake. The videos in
`List_of_testing_videos.txt` (`LABEL PATH`, 1 = real, 0 = fake) are test, the rest train/val.
Group: the identity (`id0_0003` -> id0; a fake `id0_id16_0003` shows id0's video), a YouTube
video on its own."""
from __future__ import annotations

from pathlib import Path

from .sources import Candidate
from .common import PROTOCOL_FILE, lines, protocol_error, protocol_path, rel_to

FOLDERS = {"Celeb-real": "real", "YouTube-real": "real", "Celeb-synthesis": "fake"}
LIST = "List_of_testing_videos.txt"


def _test_list(path: Path) -> dict[str, tuple[str, int]]:
    """path -> (class, line number)."""
    out = {}
    for n, line in lines(path):
        label, _, rel = line.partition(" ")
        if label not in ("0", "1") or not rel.strip():
            raise protocol_error(path, n, f"expected 'LABEL PATH' with LABEL 1 (real) or 0 (fake), got {line!r}")
        out[rel.strip()] = ("real" if label == "1" else "fake", n)
    return out


def candidates(root: Path, files, opts):
    path = protocol_path(root, opts.protocol, LIST)
    listed = _test_list(path)
    own = rel_to(root, path)
    by_rel = {f.rel: f for f in files}
    cands, rejects = [], []
    for rel, (cls, n) in listed.items():
        if rel not in by_rel:
            rejects.append({"source": rel, "reason": f"missing: listed in {path.name} line {n}, but no such file"})
    for f in files:
        top, _, name = f.rel.partition("/")
        cls = FOLDERS.get(top)
        if f.rel == own:
            rejects.append({"source": f.rel, "reason": PROTOCOL_FILE})
        elif cls is None or not name:
            rejects.append({"source": f.rel, "reason": "not a sample: outside " + ", ".join(FOLDERS)})
        elif f.rel in listed and listed[f.rel][0] != cls:
            rejects.append({"source": f.rel, "reason": f"label {listed[f.rel][0]} in {path.name} line "
                                                       f"{listed[f.rel][1]} contradicts its folder {top}"})
        else:
            group = f"{top}/{name}" if top == "YouTube-real" else name.split("_")[0]
            cands.append(Candidate(Path(f.path), f.rel, cls, group, "test" if f.rel in listed else None))
    return cands, rejects
