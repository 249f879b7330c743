"""Input layouts: each module turns INPUT (+ its protocol) into candidates and rejects.

A module defines `candidates(root, files, opts) -> (candidates, rejects)`; `files` is every file
under INPUT as the user sees it, and every one of them must come back as a candidate or a reject.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..formats import is_utf8_name, source_text
from ..names import COMPRESSIONS, DATASETS  # noqa: F401
from .sources import DEFAULT_CLASS_MAP, Discovery, select, walk_input

# --dataset name -> module
MODULES = {"folders": "folders", "table": "table", "ff++": "ffpp", "celeb-df": "celebdf", "dfdc": "dfdc",
           "asvspoof2019": "asvspoof2019", "asvspoof5": "asvspoof5", "in-the-wild": "inthewild",
           "fakeavceleb": "fakeavceleb", "deepfakebench": "deepfakebench"}
NAMES = DATASETS  # the keys of MODULES, in the order --help lists them


@dataclass
class DatasetOptions:
    protocol: Path | None = None
    class_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CLASS_MAP))
    group_depth: int = 0
    compression: str = "c23"  # FF++ and DeepfakeBench: which compression level's files are samples
    modality: str = "auto"


def module(name: str):
    if name not in MODULES:
        raise InputError(f"--dataset {name!r}: choose one of {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{MODULES[name]}")


def discover(name: str, root, modality: str = "auto", opts: DatasetOptions | None = None) -> Discovery:
    """Candidates and rejects of INPUT read as the `--dataset name` layout; opts None: `DatasetOptions()`
    (the built-in class folder names, no --group-depth, c23)."""
    mod = module(name)
    root = Path(root)
    opts = opts or DatasetOptions()
    opts.modality = modality
    if opts.protocol is not None and not opts.protocol.exists():
        raise InputError(f"--protocol {opts.protocol}: not found")
    files, rejects = walk_input(root)
    cands, more = mod.candidates(root, files, opts)
    also = getattr(mod, "ALSO_READS", {}).get(modality, frozenset())
    modality, kept, unsupported = select(root, files, cands, modality, also)
    named = [c for c in kept if is_utf8_name(c.source)]
    badly_named = [{"source": c.source, "reason": "unsupported name: not valid UTF-8; rename the file"}
                   for c in kept if not is_utf8_name(c.source)]
    return Discovery(modality, named, [_printable(r) for r in rejects + more + unsupported + badly_named])


def _printable(reject: dict) -> dict:
    """rejects.jsonl is UTF-8 JSON: a name that is not UTF-8 (as source, or inside a reason) is written in
    `source_text`'s escaped form."""
    return {k: source_text(v) if isinstance(v, str) else v for k, v in reject.items()}
