"""`dfp verify URL`: each shard of a set at a URL fetched into a temporary folder, verified there, and deleted.

The checks are `verify`'s own (`check_shard` for each shard, `verify_set` for the walk and the manifest's counts),
so a shard set is judged the same wherever it lives: the problems are the lines a local verify of the same set
reports, naming shards by their paths in the set. A missing object is a problem ("missing"), not an error. Local
disk (`$TMPDIR`) holds one shard and its `.idx` at a time; the manifest is read into memory.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from . import storage
from .errors import FormatError
from .formats import read_manifest


def verify_url(url: str, progress: bool = True) -> tuple[list[str], dict]:
    from .verify import verify_set
    url = url.rstrip("/")
    manifest = read_manifest(url)
    with tempfile.TemporaryDirectory(prefix="dfp-verify-") as tmp:
        return verify_set(manifest, partial(_fetched, url, Path(tmp)), progress=progress)


@contextmanager
def _fetched(url: str, root: Path, row: dict):
    """The row's shard and its .idx under `root` at their paths in the set, for the length of its check."""
    rels = [row["path"], row["path"][:-4] + ".idx"]
    try:
        for rel in rels:
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                # unchecked: a changed object is check_shard's problem line, not a download error
                storage.download(storage.join(url, rel), str(dest))
            except FormatError:  # missing: check_shard reports it beside the other problems
                dest.unlink(missing_ok=True)
                if rel == row["path"]:
                    break  # a shard that is not there is not read, nor is its index
        yield root / row["path"]
    finally:
        for rel in rels:
            (root / rel).unlink(missing_ok=True)
