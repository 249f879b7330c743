"""FaceForensics++ as downloaded: `original_sequences/<source>/<comp>/videos/ID.mp4` real,
`manipulated_sequences/<Method>/<comp>/videos/A_B.mp4` fake (attack: the method), masks and
models not samples. Splits: the official `train.json`/`val.json`/`test.json` (lists of id pairs
[a, b]: reals a, b and fakes a_b, b_a) in `--protocol` or INPUT/splits; without them, --split.
Group: the ids joined by the fakes made from them (a pair), so a fake and its reals share a split.
"""
from __future__ import annotations

from pathlib import Path

from .sources import Candidate
from .common import PROTOCOL_FILE, protocol_error, read_json, rel_to

SPLIT_FILES = {"train.json": "train", "val.json": "val", "test.json": "test"}


def _official(folder: Path) -> dict[str, tuple[str, str]]:
    """id -> (split, pair name) from the official split files."""
    out = {}
    for name, split in SPLIT_FILES.items():
        path = folder / name
        pairs = read_json(path)
        if not isinstance(pairs, list):
            raise protocol_error(path, None, "expected a JSON list of id pairs [a, b]")
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise protocol_error(path, None, f"entry {pair!r} is not an id pair [a, b]")
            for i in pair:
                out[i] = (split, "_".join(sorted(pair)))
    return out


def _ids(stem: str) -> list[str]:
    """The source ids of a video: '000' -> [000], '000_003' -> [000, 003]; DeepFakeDetection
    '01__scene' -> [01], '01_02__scene__X' -> [01, 02]."""
    return stem.split("__")[0].split("_")


def _sample(parts: list[str], compression: str) -> tuple[str | None, str | None, str | None]:
    """(class, attack, id stem) of a file, or a reason in place of the class when it is no sample."""
    if len(parts) < 5 or parts[0] not in ("original_sequences", "manipulated_sequences"):
        return "not a sample: outside original_sequences/ and manipulated_sequences/", None, None
    comp = parts[2]
    if comp in ("masks", "models"):
        return f"not a sample: {'mask video' if comp == 'masks' else 'model weights'}", None, None
    if comp != compression:
        return f"not a sample: compression {comp}, packing --ff-compression {compression}", None, None
    stem = parts[4].rsplit(".", 1)[0]
    fake = parts[0] == "manipulated_sequences"
    return ("fake" if fake else "real"), (parts[1] if fake else None), stem


def candidates(root: Path, files, opts):
    folder = opts.protocol or (root / "splits")
    official = _official(folder) if folder.exists() else {}
    own = {rel_to(root, folder / n) for n in SPLIT_FILES}
    parent = {}

    def find(i):
        while parent.setdefault(i, i) != i:
            i = parent[i]
        return i

    cands, rejects, ids = [], [], []
    for f in files:
        parts = f.rel.split("/")
        cls, attack, stem = _sample(parts, opts.compression)
        if f.rel in own:
            rejects.append({"source": f.rel, "reason": PROTOCOL_FILE})
        elif stem is None:
            rejects.append({"source": f.rel, "reason": cls})
        else:
            ids.append(_ids(stem))
            for i in ids[-1][1:]:
                parent[find(i)] = find(ids[-1][0])
            cands.append(Candidate(Path(f.path), f.rel, cls, None, None, attack))
    for c, i in zip(cands, ids):
        hit = [official[x] for x in i if x in official]
        c.split, c.group = hit[0] if hit else (None, find(i[0]))
    return cands, rejects
