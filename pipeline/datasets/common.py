"""What the protocol-driven layouts share: reading label files, joining them to the files found."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from ..errors import InputError
from .sources import Candidate, modality_of

PROTOCOL_FILE = "protocol file, not a sample"


class Entry(NamedTuple):
    """One sample as a protocol lists it."""
    rel: str  # expected path under INPUT
    cls: str
    split: str | None
    group: str | None
    attack: str | None
    where: str  # "FILE line N", for the reject of a missing file


def protocol_error(path, lineno: int | None, msg: str) -> InputError:
    at = f"{path} line {lineno}" if lineno else str(path)
    return InputError(f"{at}: {msg}")


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise protocol_error(path, None, "protocol file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise protocol_error(path, None, f"cannot read the protocol file ({why})") from None


def read_json(path: Path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise protocol_error(path, e.lineno, f"not valid JSON ({e.msg})") from None


def beside(root: Path, path: Path) -> tuple[str | None, str]:
    """(the protocol's own path under INPUT or None, the prefix under INPUT of the files it names
    relative to its folder)."""
    own = rel_to(root, path)
    folder = rel_to(root, path.parent) if own else None
    return own, "" if folder in (None, ".") else folder + "/"


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line; the last line may lack its newline."""
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            yield n, line.strip()


def csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """Rows of a headed CSV as dicts (line numbers count the header as line 1)."""
    rows = csv.reader(read_text(path).splitlines())
    header = [h.strip().lower() for h in next(rows, [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise protocol_error(path, 1, f"header {','.join(header)!r} lacks column(s) {', '.join(missing)}")
    for n, row in enumerate(rows, 2):
        if not any(x.strip() for x in row):
            continue
        if len(row) < len(required):
            raise protocol_error(path, n, f"{len(row)} values, expected {len(header)} ({','.join(header)})")
        yield n, {h: row[i].strip() for i, h in enumerate(header) if h and i < len(row)}


def rel_to(root: Path, path: Path) -> str | None:
    """path relative to root (POSIX), or None when it lies outside."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return None


def protocol_path(root: Path, given: Path | None, *defaults: str) -> Path:
    """--protocol when given, else the first default (relative to INPUT) that exists."""
    if given is not None:
        return given
    for d in defaults:
        if (root / d).exists():
            return root / d
    raise InputError(f"INPUT {root}: no {' or '.join(defaults)} found; point at it with --protocol")


def join(files, entries: list[Entry], unlisted: Callable[[str], str]) -> tuple[list[Candidate], list[dict]]:
    """Candidates for the listed files that exist, rejects for listed files that do not (under their
    expected path) and, through `unlisted(rel)` -> reason, for every file the protocol does not list."""
    by_rel = {f.rel: f for f in files}
    cands, rejects, listed = [], [], set()
    for e in entries:
        if e.rel in listed:
            continue
        listed.add(e.rel)
        f = by_rel.get(e.rel)
        if f is None:
            rejects.append({"source": e.rel, "reason": f"missing: listed in {e.where}, but no such file"})
        else:
            cands.append(Candidate(Path(f.path), f.rel, e.cls, e.group, e.split, e.attack))
    rejects += [{"source": f.rel, "reason": unlisted(f.rel)} for f in files if f.rel not in listed]
    return cands, rejects


def not_listed(protocol_name: str, protocols: set[str] = frozenset()) -> Callable[[str], str]:
    """The reason for a file a protocol-complete dataset does not list."""
    def reason(rel: str) -> str:
        if rel in protocols:
            return PROTOCOL_FILE
        if modality_of(rel) is None:
            return "not a sample: not a media file"
        return f"not listed in {protocol_name}"
    return reason
