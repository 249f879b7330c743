"""Find input files, map folders to classes, pick the modality and assign splits.

Every regular file under INPUT comes out of `discover` either as a candidate sample or as
a reject with a reason, so the shard builder can account for every file.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .formats import CLASSES, SPLITS

EXTENSIONS = {
    "image": {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"},
    "audio": {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"},
    "video": {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"},
}
# Folder names understood without --class-map (compared lower-case).
DEFAULT_CLASS_MAP = {
    "real": "real", "original": "real", "authentic": "real", "bonafide": "real", "genuine": "real", "pristine": "real",
    "fake": "fake", "manipulated": "fake", "deepfake": "fake", "spoof": "fake", "synthetic": "fake", "generated": "fake",
}


class InputError(Exception):
    """Bad input or arguments: reported as one line, exit code 2."""


@dataclass
class Candidate:
    path: Path
    source: str  # path relative to INPUT, POSIX separators
    cls: str
    group: str  # files of one group stay in one split
    split: str | None = None  # set for pre-split inputs


@dataclass
class Discovery:
    modality: str
    candidates: list[Candidate]
    rejects: list[dict] = field(default_factory=list)  # {"source", "reason"}
    presplit: bool = False


def parse_class_map(text: str | None) -> dict[str, str]:
    """`original,real=real manipulated,fake=fake` -> {"original": "real", ...}."""
    if not text:
        return dict(DEFAULT_CLASS_MAP)
    out: dict[str, str] = {}
    for entry in text.replace(";", " ").split():
        if "=" not in entry:
            raise InputError(f"--class-map: entry {entry!r} needs the form names=real or names=fake")
        names, target = entry.rsplit("=", 1)
        if target not in CLASSES:
            raise InputError(f"--class-map: target {target!r} must be 'real' or 'fake'")
        for name in names.split(","):
            if name:
                out[name.lower()] = target
    return out


def parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"--split {text!r}: give three fractions like 0.8,0.1,0.1") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise InputError(f"--split {text!r}: three non-negative fractions that sum to 1, like 0.8,0.1,0.1")
    return parts[0], parts[1], parts[2]


def modality_of(path: str | Path) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    for modality, exts in EXTENSIONS.items():
        if ext in exts:
            return modality
    return None


def _walk(root: Path) -> list[tuple[str, str]]:
    """(relative POSIX path, full path) of every regular file under root, sorted by the relative path
    (for determinism). Symlinks are not followed. Directory entries carry their file type, so this
    needs no stat per file."""
    files: list[tuple[str, str]] = []
    pending = [("", str(root))]
    while pending:
        prefix, folder = pending.pop()
        try:
            with os.scandir(folder) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        pending.append((prefix + e.name + "/", e.path))
                    elif e.is_file(follow_symlinks=False):
                        files.append((prefix + e.name, e.path))
        except OSError as e:
            # its files could be neither packed nor listed as rejects: stop rather than lose them silently
            raise InputError(f"cannot list folder {folder} ({e.strerror or e}); fix its permissions or move it out "
                             "of INPUT") from None
    files.sort()
    return files


def discover(root: str | Path, modality: str = "auto", class_map: dict[str, str] | None = None,
             group_depth: int = 0, exclude: Path | None = None) -> Discovery:
    root = Path(root)
    if not root.exists():
        raise InputError(f"INPUT {root} does not exist")
    if not root.is_dir():
        raise InputError(f"INPUT {root} is not a folder")
    class_map = class_map if class_map is not None else dict(DEFAULT_CLASS_MAP)
    files = _walk(root)
    if exclude is not None:
        ex = exclude.resolve()
        files = [(rel, f) for rel, f in files if ex not in Path(f).resolve().parents]
    if not files:
        raise InputError(f"INPUT {root} is empty: put files under {root}/real and {root}/fake")

    top = {p.name.lower() for p in root.iterdir() if p.is_dir()}
    presplit = "train" in top and any((root / d).is_dir() for d in os.listdir(root) if d.lower() == "train")

    candidates: list[Candidate] = []
    rejects: list[dict] = []
    for rel, f in files:
        parts = rel.split("/")
        split = None
        if presplit and parts[0].lower() in SPLITS:
            split, parts = parts[0].lower(), parts[1:]
        cls = class_map.get(parts[0].lower()) if len(parts) > 1 else None
        if cls is None:
            rejects.append({"source": rel, "reason": "not under a real/fake class folder"})
            continue
        inner = parts[1:]
        group = "/".join([parts[0]] + inner[:min(group_depth, len(inner) - 1)]) if group_depth > 0 else rel
        candidates.append(Candidate(Path(f), rel, cls, group, split))

    counts = Counter(c.cls for c in candidates)
    if not counts:
        raise InputError(f"INPUT {root}: no real/fake class folders found (expected {root}/real and {root}/fake, "
                         "or name yours with --class-map)")
    if len(counts) < 2:
        only = next(iter(counts))
        missing = "fake" if only == "real" else "real"
        raise InputError(f"INPUT {root}: only the '{only}' class was found; add a '{missing}' folder "
                         "(or map one with --class-map)")

    if modality == "auto":
        votes = Counter(m for m in (modality_of(c.path) for c in candidates) if m)
        if not votes:
            raise InputError(f"INPUT {root}: no image, audio or video files found; pass --modality")
        modality = votes.most_common(1)[0][0]
    elif modality not in EXTENSIONS:
        raise InputError(f"--modality {modality!r}: choose auto, image, audio or video")

    kept = []
    for c in candidates:
        if modality_of(c.path) != modality:
            rejects.append({"source": c.source, "reason": f"unsupported extension for {modality}"})
        else:
            kept.append(c)
    return Discovery(modality, kept, rejects, presplit)


def assign_splits(candidates: list[Candidate], fractions: tuple[float, float, float], seed: int) -> None:
    """Seeded, stratified per class, grouped: files sharing `group` land in the same split.

    Groups are shuffled per class and cut at the cumulative fractions, so each class keeps
    its share in every split (to the granularity of its groups).
    """
    by_class: dict[str, dict[str, list[Candidate]]] = {}
    for c in candidates:
        if c.split is None:
            by_class.setdefault(c.cls, {}).setdefault(c.group, []).append(c)
    bounds = np.cumsum(fractions)
    for ci, cls in enumerate(sorted(by_class)):
        groups = by_class[cls]
        names = sorted(groups)
        rng = np.random.default_rng([seed, ci])
        order = rng.permutation(len(names))
        total = sum(len(g) for g in groups.values())
        done = 0
        for i in order:
            members = groups[names[i]]
            mid = (done + len(members) / 2) / total  # a group goes where its middle falls
            split = SPLITS[min(int(np.searchsorted(bounds, mid, side="right")), 2)]
            for c in members:
                c.split = split
            done += len(members)
