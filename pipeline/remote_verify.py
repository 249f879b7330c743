"""`dfp verify URL`: every object of a shard set at a URL fetched into a temporary folder and verified there.

The checks are `verify.verify_shards`'s own (checksums, counts, index files, decoding), so a shard set is
judged the same wherever it lives; problems name the shards by their paths in the set. A missing object is a
problem ("missing"), not an error. The whole set needs local disk for the length of the check (`$TMPDIR`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from . import storage
from .errors import FormatError
from .formats import MANIFEST, REJECTS, read_manifest


def verify_url(url: str, progress: bool = True) -> tuple[list[str], dict]:
    from .verify import verify_shards
    url = url.rstrip("/")
    manifest = read_manifest(url)
    with tempfile.TemporaryDirectory(prefix="dfp-verify-") as tmp:
        root = Path(tmp)
        rels = [MANIFEST, REJECTS] + [p for r in manifest["shards"] for p in (r["path"], r["path"][:-4] + ".idx")]
        for rel in rels:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                storage.download(storage.join(url, rel), str(root / rel))
            except FormatError:  # missing: verify_shards reports it beside the other problems
                (root / rel).unlink(missing_ok=True)
        return verify_shards(root, progress=progress)
