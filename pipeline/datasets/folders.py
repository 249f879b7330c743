"""Class folders (`real/`, `fake/` and synonyms), optionally under split folders (`train/real/`) or
named `SPLIT_CLASS` (`train_real/`, `test_fake/`). Groups: `--group-depth` folders below the class folder."""
from __future__ import annotations

import re
from pathlib import Path

from .sources import SPLIT_NAMES, Candidate

_SEP = re.compile(r"[_\- ]+")


def _top(name: str, class_map: dict[str, str]) -> tuple[str | None, str | None]:
    """(split, class) a top-level folder name stands for: a split, a class or SPLIT_CLASS."""
    low = name.lower()
    if low in SPLIT_NAMES:
        return SPLIT_NAMES[low], None
    if low in class_map:
        return None, class_map[low]
    head, _, tail = _SEP.sub("_", low).partition("_")
    if head in SPLIT_NAMES and tail in class_map:
        return SPLIT_NAMES[head], class_map[tail]
    return None, None


def candidates(root: Path, files, opts) -> tuple[list[Candidate], list[dict]]:
    class_map, depth = opts.class_map, opts.group_depth
    tops: dict[str, tuple[str | None, str | None]] = {}
    out, rejects = [], []
    for f in files:
        parts = whole = f.rel.split("/")
        if parts[0] not in tops:
            tops[parts[0]] = _top(parts[0], class_map)
        split, cls = tops[parts[0]] if len(parts) > 1 else (None, None)
        if split is not None and cls is None:
            parts = parts[1:]
            cls = class_map.get(parts[0].lower()) if len(parts) > 1 else None
        if cls is None:
            rejects.append({"source": f.rel, "reason": "not under a real/fake class folder"})
            continue
        inner = len(parts) - 1  # folders and file below the class folder
        group = "/".join(whole[:len(whole) - inner + min(depth, inner - 1)]) if depth > 0 else None
        out.append(Candidate(Path(f.path), f.rel, cls, group, split))
    return out, rejects
