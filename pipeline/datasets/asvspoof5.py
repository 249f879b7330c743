"""ASVspoof 5: `ASVspoof5.{train,dev.track_1,eval.track_1}.tsv` (space-separated, ten columns:
SPEAKER FILE GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG ATTACK_LABEL KEY -) list every sample;
audio in `flac_T/`, `flac_D/`, `flac_E_eval/` -> train/val/test. Group: the speaker; attack: the
attack label (A01...)."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .asvspoof2019 import KEYS, audio_index
from .common import Entry, join, lines, not_listed, protocol_error, rel_to

PART = {"train": ("train", "flac_T"), "dev.track_1": ("val", "flac_D"), "eval.track_1": ("test", "flac_E_eval")}


def _protocol(path: Path, split: str, audio: dict, expected: str) -> list[Entry]:
    out = []
    for n, line in lines(path):
        cols = line.split()
        if len(cols) != 10 or cols[8] not in KEYS:
            raise protocol_error(path, n, f"expected ten space-separated columns with KEY (9th) bonafide or spoof, "
                                          f"got {len(cols)}: {line!r}")
        speaker, name, attack, key = cols[0], cols[1], cols[7], cols[8]
        rel = audio.get(name, f"{expected}/{name}.flac")
        out.append(Entry(rel, KEYS[key], split, speaker, attack if key == "spoof" else None, f"{path.name} line {n}"))
    return out


def candidates(root: Path, files, opts):
    folder = opts.protocol or root
    if folder.is_file():
        folder = folder.parent
    audio = audio_index(files)
    entries, protocols = [], set()
    for part, (split, flac) in PART.items():
        path = folder / f"ASVspoof5.{part}.tsv"
        if path.exists():
            protocols.add(rel_to(root, path))
            entries += _protocol(path, split, audio, flac)
    if not entries:
        raise InputError(f"{folder}: no ASVspoof5.train.tsv, ASVspoof5.dev.track_1.tsv or ASVspoof5.eval.track_1.tsv "
                         "found; point at their folder with --protocol")
    return join(files, entries, not_listed("the ASVspoof5 .tsv protocols", protocols))
