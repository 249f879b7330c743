"""ASVspoof 2019 LA: the cm protocols (`SPEAKER FILE - SYSTEM KEY`, SYSTEM `-` for bonafide) in
`ASVspoof2019_LA_cm_protocols/` (in INPUT, in INPUT/LA, or `--protocol`) list every sample;
`ASVspoof2019_LA_{train,dev,eval}/flac/FILE.flac` -> train/val/test. Group: the speaker; attack:
the system id (A01...)."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .common import Entry, join, lines, not_listed, protocol_error, protocol_path, rel_to

FOLDER = "ASVspoof2019_LA_cm_protocols"
PART = {"train": ("train", "trn"), "dev": ("val", "trl"), "eval": ("test", "trl")}
KEYS = {"bonafide": "real", "spoof": "fake"}


def audio_index(files, exts=(".flac", ".wav")) -> dict[str, str]:
    """File id (name without extension) -> path under INPUT, for protocols that name files by id."""
    out = {}
    for f in files:
        name = f.rel.rsplit("/", 1)[-1]
        stem, dot, ext = name.rpartition(".")
        if dot and "." + ext.lower() in exts:
            out.setdefault(stem, f.rel)
    return out


def _protocol(path: Path, split: str, audio: dict, expected: str) -> list[Entry]:
    out = []
    for n, line in lines(path):
        cols = line.split()
        if len(cols) != 5 or cols[4] not in KEYS:
            raise protocol_error(path, n, f"expected 'SPEAKER FILE - SYSTEM bonafide|spoof', got {line!r}")
        speaker, name, _, system, key = cols
        rel = audio.get(name, f"{expected}/{name}.flac")
        attack = None if key == "bonafide" else system
        out.append(Entry(rel, KEYS[key], split, speaker, attack, f"{path.name} line {n}"))
    return out


def candidates(root: Path, files, opts):
    folder = protocol_path(root, opts.protocol, FOLDER, f"LA/{FOLDER}")
    parent = rel_to(root, folder.parent)
    base = parent if parent not in (None, ".") else ("LA" if (root / "LA").is_dir() else "")
    audio = audio_index(files)
    entries, protocols = [], set()
    for part, (split, suffix) in PART.items():
        path = folder / f"ASVspoof2019.LA.cm.{part}.{suffix}.txt"
        if not path.exists():
            raise InputError(f"{path}: protocol file not found (--dataset asvspoof2019 needs train, dev and eval)")
        protocols.add(rel_to(root, path))
        expected = "/".join(p for p in (base, f"ASVspoof2019_LA_{part}", "flac") if p)
        entries += _protocol(path, split, audio, expected)
    return join(files, entries, not_listed(FOLDER, protocols))
