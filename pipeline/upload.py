"""`dfp shard INPUT s3://bucket/prefix`: build in a local temporary folder, then upload the shard set.

The upload is ordered so that a half-done one is never a valid shard set: a manifest already at the URL goes
first (its shards are about to be replaced), then the shards and their `.idx` files, then rejects.jsonl, and the
manifest last. Each object carries its file's sha256 (`storage.upload`). A rerun after an interruption builds the
same shards again (the build is deterministic) and uploads only what is not provably at the URL already: an
object of the file's size whose recorded sha256 is the file's is left as it is; one without a recorded sha256
(written by another tool, or where the scheme keeps no metadata) is uploaded again, whatever its size. The
manifest is always uploaded. Objects of an earlier set that the new manifest does not list are removed after it is
written. The build needs local disk for the whole set (`$TMPDIR`).
"""
from __future__ import annotations

import hashlib
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
    return sorted(_listing(url))


def _listing(url: str) -> dict[str, int]:
    """The objects below the URL's prefix, relative to it, with their sizes (one listing, no request per object)."""
    fs = storage.filesystem(url)
    if not hasattr(fs, "find") or storage.scheme(url) in ("http", "https"):
        raise InputError(f"OUT {url}: {storage.scheme(url)}:// is read-only for dfp; write shards to a folder, "
                         "s3:// or gs://")
    root = fs._strip_protocol(url).rstrip("/")
    found = storage.call(url, lambda: fs.find(root, detail=True), "list")
    return {p[len(root) + 1:]: info.get("size") for p, info in found.items() if p.startswith(root + "/")}


def check_target(url: str) -> dict[str, int]:
    """OUT at a URL holds nothing, or only what dfp shard writes (an earlier or half-done upload): its objects
    and their sizes."""
    storage.check_url(url, "OUT")
    found = _listing(url)
    foreign = next((n for n in sorted(found) if not _OWN.match(n)), None)
    if foreign is not None:
        raise InputError(f"OUT {url} holds {foreign}, which dfp shard did not write: give an empty prefix or a "
                         "previous dfp shard upload")
    return found


def build_and_upload(input_dir, url: str, params, workers=None, progress: bool = True, log=print) -> dict:
    from .shards import build_shards
    url = url.rstrip("/")
    before = check_target(url)
    with tempfile.TemporaryDirectory(prefix="dfp-shard-") as tmp:
        folder = Path(tmp) / "shards"
        summary = build_shards(input_dir, folder, params, workers=workers, progress=progress)
        summary["uploaded"], summary["skipped"] = upload_shard_set(folder, url, before, progress)
    log(f"upload: {summary['uploaded']} object(s) uploaded, {summary['skipped']} already at {url} (same size and "
        "sha256) skipped")
    return summary


def upload_shard_set(folder: Path, url: str, before: dict[str, int], progress: bool = True) -> tuple[int, int]:
    """Upload a local shard set in the order that keeps the URL from holding a set that is not whole; `before`:
    the objects at the URL and their sizes. Returns (uploaded, skipped)."""
    manifest = read_manifest(folder)
    digests = _digests(folder, manifest)
    files = [rel for rel in digests if rel != MANIFEST]
    if MANIFEST in before:
        storage.remove(storage.join(url, MANIFEST))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(files) + 1, unit="file", desc="uploading", dynamic_ncols=True)
    skipped = 0
    for rel in [*files, MANIFEST]:
        if rel != MANIFEST and _already_there(folder / rel, storage.join(url, rel), digests[rel], before.get(rel)):
            skipped += 1
        else:
            storage.upload(str(folder / rel), storage.join(url, rel), digests[rel])
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    for rel in before:
        if rel not in digests:
            storage.remove(storage.join(url, rel))
    return len(files) + 1 - skipped, skipped


def _digests(folder: Path, manifest: dict) -> dict[str, str]:
    """The sha256 of every file of the set, in upload order (the manifest's own for the shards: they are not
    read twice)."""
    out = {}
    for r in manifest["shards"]:
        out[r["path"]] = r["sha256"]
        out[r["path"][:-4] + ".idx"] = _sha256(folder / (r["path"][:-4] + ".idx"))
    for rel in (REJECTS, MANIFEST):
        out[rel] = _sha256(folder / rel)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(storage.CHUNK), b""):
            h.update(b)
    return h.hexdigest()


def _already_there(local: Path, url: str, sha256: str, remote_size: int | None) -> bool:
    """Provably the local file: the same size and the same sha256 recorded at its upload (size alone proves
    nothing: a rebuilt shard of another content can have the same size)."""
    return remote_size == local.stat().st_size and storage.recorded_sha256(url) == sha256
