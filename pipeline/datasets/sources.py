"""Find input files, pick the modality and drop duplicates: what every dataset layout shares.

Every file under INPUT as the user sees it (symlinks followed) comes out of discovery either
as a candidate sample or as a reject with a reason, so the shard builder can account for every file.
Which file is which class, split, group and attack is each layout's business (the modules beside this one).
"""
from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..errors import InputError
from ..formats import CLASSES

EXTENSIONS = {
    "image": {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"},
    "audio": {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"},
    "video": {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"},
}
# Folder names understood without --class-map (compared lower-case).
DEFAULT_CLASS_MAP = {
    "real": "real", "original": "real", "authentic": "real", "bonafide": "real", "genuine": "real", "pristine": "real",
    "nature": "real",
    "fake": "fake", "manipulated": "fake", "deepfake": "fake", "spoof": "fake", "synthetic": "fake", "generated": "fake",
    "ai": "fake",
}
# Split folder names and their synonyms (compared lower-case).
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "eval": "test", "evaluation": "test"}


@dataclass
class Candidate:
    path: Path
    source: str  # path relative to INPUT, POSIX separators
    cls: str
    group: str | None  # files of one group stay in one split; None: the file is its own group
    split: str | None = None  # set where the dataset gives the split
    attack: str | None = None  # the method or system that made a fake, where the dataset names it


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


class _File(NamedTuple):
    rel: str  # path under INPUT as the user sees it (through links), POSIX separators
    path: str  # where to open it
    real: str  # link-free absolute path: the same value for every path that reaches one file
    linked: bool  # reached through a symlink below INPUT


class _Dir(NamedTuple):
    prefix: str
    path: str
    real: str
    chain: tuple[str, ...]  # real paths of the folders walked to get here, to spot a loop
    linked: bool
    link_rel: str | None  # set when this folder is the target of the link at this path


def _link_target(link: str) -> tuple[str, str, str | None]:
    """(kind, real target, problem) for one symlink; kind is "dir", "file" or "" with a problem."""
    try:
        st = os.stat(link)
    except OSError as e:
        target = os.readlink(link)
        if e.errno == errno.ELOOP:
            return "", "", f"link loop: following {target} leads back to this link"
        if e.errno == errno.ENOENT:
            return "", "", f"dangling link: target {target} does not exist"
        return "", "", f"unreadable link target: {target} ({e.strerror or e})"
    real = os.path.realpath(link)
    if stat.S_ISDIR(st.st_mode):
        return "dir", real, None
    if not stat.S_ISREG(st.st_mode):
        return "", real, f"not a regular file: the link points to {real}"
    if not os.access(real, os.R_OK):
        return "", real, f"unreadable link target: {real} (permission denied)"
    return "file", real, None


def _list(d: _Dir, rejects: list[dict]) -> list[os.DirEntry]:
    try:
        with os.scandir(d.path) as it:
            return list(it)
    except OSError as e:
        if d.link_rel is not None:
            rejects.append({"source": d.link_rel,
                            "reason": f"unreadable link target: cannot list {d.real} ({e.strerror or e})"})
            return []
        # its files could be neither packed nor listed as rejects: stop rather than lose them silently
        raise InputError(f"cannot list folder {d.path} ({e.strerror or e}); fix its permissions or move it out "
                         "of INPUT") from None


def _walk(root: Path) -> tuple[list[_File], list[dict]]:
    """Every file under root as the user sees it, sorted by relative path (for determinism), and the
    entries that cannot be files: dangling links, link loops, unreadable link targets, special files.

    Symlinks are followed, to files and to folders, also outside root. A folder that is the same
    folder as one the walk is already inside of (reached through a link) is reported as a loop and
    not entered, as `find -L` does, so no folder is entered twice on one path and the walk ends.
    Regular files and folders need no stat: their directory entries carry the type, and their real
    path is their folder's real path plus their name; only links are resolved."""
    real_root = os.path.realpath(root)
    pending = [_Dir("", str(root), real_root, (real_root,), False, None)]
    files: list[_File] = []
    rejects: list[dict] = []
    while pending:
        d = pending.pop()
        for e in _list(d, rejects):
            rel, real = d.prefix + e.name, os.path.join(d.real, e.name)
            kind, linked, link_rel = "", d.linked, None
            if e.is_symlink():
                kind, real, problem = _link_target(e.path)
                if problem:
                    rejects.append({"source": rel, "reason": problem})
                    continue
                linked, link_rel = True, rel
            elif e.is_dir(follow_symlinks=False):
                kind = "dir"
            elif e.is_file(follow_symlinks=False):
                kind = "file"
            else:
                rejects.append({"source": rel, "reason": "not a regular file (device, pipe or socket)"})
            if kind == "dir" and real in d.chain:
                rejects.append({"source": rel, "reason": f"link loop: leads back to {real}, a folder it is inside of"
                                                          " (not walked again)"})
            elif kind == "dir":
                pending.append(_Dir(rel + "/", e.path, real, d.chain + (real,), linked, link_rel))
            elif kind == "file":
                files.append(_File(rel, e.path, real, linked))
    files.sort()
    return files, rejects


def _drop_duplicates(kept: list[Candidate], files: dict[str, _File]) -> tuple[list[Candidate], list[dict]]:
    """One sample per file when several paths lead to it through symlinks: the path without a link wins,
    then the first in sorted order; the others are rejected naming the winner."""
    winner: dict[str, str] = {}
    for c in sorted(kept, key=lambda c: (files[c.source].linked, c.source)):
        winner.setdefault(files[c.source].real, c.source)
    out, rejects = [], []
    for c in kept:
        first = winner[files[c.source].real]
        if first == c.source:
            out.append(c)
        else:
            rejects.append({"source": c.source, "reason": f"duplicate: the same file as {first}, packed under that path"})
    return out, rejects


def walk_files(root: str | Path) -> tuple[list[_File], list[dict]]:
    """Every file under a folder as the user sees it, and what cannot be a file, for any walk of user folders."""
    return _walk(Path(root))


def walk_input(root: str | Path) -> tuple[list[_File], list[dict]]:
    """Every file under root as the user sees it (see `_walk`), with the rejects it met on the way."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"INPUT {root} does not exist")
    if not root.is_dir():
        raise InputError(f"INPUT {root} is not a folder")
    files, rejects = walk_files(root)
    if not files:
        raise InputError(f"INPUT {root} is empty: put files under {root}/real and {root}/fake")
    return files, rejects


def _check_classes(root: Path, candidates: list[Candidate]) -> None:
    counts = Counter(c.cls for c in candidates)
    if not counts:
        raise InputError(f"INPUT {root}: no real/fake class folders found (expected {root}/real and {root}/fake, "
                         "or name yours with --class-map)")
    if len(counts) < 2:
        only = next(iter(counts))
        missing = "fake" if only == "real" else "real"
        raise InputError(f"INPUT {root}: only the '{only}' class was found; add a '{missing}' folder "
                         "(or map one with --class-map)")


def select(root: Path, files: list[_File], candidates: list[Candidate], modality: str,
           also: frozenset[str] = frozenset()) -> tuple[str, list[Candidate], list[dict]]:
    """Pick the modality (by majority vote for auto), reject candidates of another one and
    drop symlinked duplicates. also: extensions read as `modality` beside its own (audio from mp4)."""
    _check_classes(root, candidates)
    if modality == "auto":
        votes = Counter(m for m in (modality_of(c.path) for c in candidates) if m)
        if not votes:
            raise InputError(f"INPUT {root}: no image, audio or video files found; pass --modality")
        modality = votes.most_common(1)[0][0]
    elif modality not in EXTENSIONS:
        raise InputError(f"--modality {modality!r}: choose auto, image, audio or video")
    kept, rejects = [], []
    for c in candidates:
        if modality_of(c.path) != modality and os.path.splitext(c.source)[1].lower() not in also:
            rejects.append({"source": c.source, "reason": f"unsupported extension for {modality}"})
        else:
            kept.append(c)
    kept, duplicates = _drop_duplicates(kept, {f.rel: f for f in files})
    return modality, kept, rejects + duplicates

