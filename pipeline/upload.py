"""`dfp shard INPUT s3://bucket/prefix`: build in a local temporary folder, then upload the shard set.

The upload is ordered so that a half-done one is never a valid shard set: a manifest already at the URL goes
first (its shards are about to be replaced), then the shards and their `.idx` files, then rejects.jsonl, and the
manifest last. A rerun after an interruption builds the same shards again (the build is deterministic) and
uploads them; objects of an earlier set that the new manifest does not list are removed after it is written.
The build needs local disk for the whole set (`$TMPDIR`).
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from . import storage
from .errors import InputError
from .formats import MANIFEST, REJECTS, read_manifest

# what dfp shard writes at OUT; anything else there is the user's, and is not written over
_OWN = re.compile(rf"^({re.escape(MANIFEST)}|{re.escape(REJECTS)}|(train|val|test)/[A-Za-z0-9_.-]+\.(tar|idx))$")


def existing_objects(url: str) -> list[str]:
    """Names of the objects below the URL's prefix, relative to it."""
    fs = storage.filesystem(url)
    if not hasattr(fs, "find") or storage.scheme(url) in ("http", "https"):
        raise InputError(f"OUT {url}: {storage.scheme(url)}:// is read-only for dfp; write shards to a folder, "
                         "s3:// or gs://")
    root = fs._strip_protocol(url).rstrip("/")
    found = storage.call(url, lambda: fs.find(root), "list")
    return sorted(p[len(root) + 1:] for p in found if p.startswith(root + "/"))


def check_target(url: str) -> list[str]:
    """OUT at a URL holds nothing, or only what dfp shard writes (an earlier or half-done upload)."""
    storage.check_url(url, "OUT")
    names = existing_objects(url)
    foreign = next((n for n in names if not _OWN.match(n)), None)
    if foreign is not None:
        raise InputError(f"OUT {url} holds {foreign}, which dfp shard did not write: give an empty prefix or a "
                         "previous dfp shard upload")
    return names


def build_and_upload(input_dir, url: str, params, workers=None, progress: bool = True, log=print) -> dict:
    from .shards import build_shards
    url = url.rstrip("/")
    before = check_target(url)
    with tempfile.TemporaryDirectory(prefix="dfp-shard-") as tmp:
        folder = Path(tmp) / "shards"
        summary = build_shards(input_dir, folder, params, workers=workers, progress=progress)
        summary["uploaded"] = upload_shard_set(folder, url, before, progress)
    return summary


def upload_shard_set(folder: Path, url: str, before: list[str], progress: bool = True) -> int:
    """Upload a local shard set in the order that keeps the URL from holding a set that is not whole."""
    manifest = read_manifest(folder)
    files = [rel for r in manifest["shards"] for rel in (r["path"], r["path"][:-4] + ".idx")] + [REJECTS]
    if MANIFEST in before:
        storage.remove(storage.join(url, MANIFEST))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(files) + 1, unit="file", desc="uploading", dynamic_ncols=True)
    for rel in [*files, MANIFEST]:
        storage.upload(str(folder / rel), storage.join(url, rel))
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    keep = set(files) | {MANIFEST}
    for rel in before:
        if rel not in keep:
            storage.remove(storage.join(url, rel))
    return len(files) + 1
