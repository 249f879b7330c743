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

import datetime
import hashlib
import json
import os
import re
import socket
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from . import storage
from .errors import InputError
from .formats import MANIFEST, REJECTS, read_manifest

# held for the length of one upload, so that a second dfp shard to the same prefix is refused
CLAIM = ".dfp-shard-claim"
# what dfp shard writes at OUT; anything else there is the user's, and is not written over
_OWN = re.compile(rf"^({re.escape(MANIFEST)}|{re.escape(REJECTS)}|{re.escape(CLAIM)}|"
                  r"(train|val|test)/[A-Za-z0-9_.-]+\.(tar|idx))$")


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
    check_target(url)  # a prefix holding the user's objects is refused before anything is written to it
    with claimed(url, log), tempfile.TemporaryDirectory(prefix="dfp-shard-") as tmp:
        # listed again under the claim: an upload that finished meanwhile left objects this one replaces
        before = {n: b for n, b in check_target(url).items() if n != CLAIM}
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
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _already_there(local: Path, url: str, sha256: str, remote_size: int | None) -> bool:
    """Provably the local file: the same size and the same sha256 recorded at its upload (size alone proves
    nothing: a rebuilt shard of another content can have the same size)."""
    return remote_size == local.stat().st_size and storage.recorded_sha256(url) == sha256


# ---------------------------------------------------------------- one upload at a time
@contextmanager
def claimed(url: str, log=print):
    """OUT held by this run while it builds and uploads: two runs at once would each overwrite the other's shards,
    and the manifest written last would name shards of the other run. The claim is an object created only where
    none exists (a conditional write); it is removed at the end, and a claim left by a killed run is taken over
    when that run provably stopped (`_gone`). Schemes without conditional writes go unclaimed."""
    if storage.scheme(url) not in storage.CONDITIONAL_SCHEMES:
        yield
        return
    claim = storage.join(url, CLAIM)
    mine = {"by": _machine(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    _take(url, claim, mine, log)
    try:
        yield
    finally:
        _release(claim, mine, log)


def _take(url: str, claim: str, mine: dict, log) -> None:
    data = json.dumps(mine).encode()
    for _ in range(2):  # once more when the claim that refused this one is gone by the time it is read
        if storage.create(claim, data):
            if storage.create(claim, data):  # a server that ignores If-None-Match: the claim guards nothing
                log(f"warning: OUT {url}: the storage ignores conditional writes, so nothing stops a second dfp "
                    "shard to this prefix at the same time")
            return
        tag = storage.etag(claim)  # before the read: a claim changed after it fails the If-Match below
        held = _held(claim) if tag is not None else None
        if held is None:
            continue
        if held and held.get("token") == mine["token"]:
            return  # a retried create whose first try had landed
        if held and _gone(held) and storage.replace(claim, data, tag):
            log(f"dfp shard: taking over {claim} from pid {held.get('pid')}, which is not running any more")
            return
        break
    held = held or {}
    raise InputError(f"OUT {url}: another dfp shard is uploading there ({held.get('by', '?')}, pid "
                     f"{held.get('pid', '?')}, since {held.get('since', '?')}); wait for it to end, or if it is not "
                     f"running any more, remove {claim} and run again")


def _held(claim: str) -> dict | None:
    from .errors import FormatError
    try:
        held = json.loads(storage.read_text(claim))
    except FormatError:  # removed since: its run ended
        return None
    except ValueError:
        return {}  # not a claim dfp wrote: it stands
    return held if isinstance(held, dict) else {}


def _machine() -> str:
    """This host and its process-id namespace: where a claim's pid can be looked up (a container's pids are its
    own)."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()} {ns}".strip()


def _gone(held: dict) -> bool:
    """Provably not running: claimed here (`_machine`) by a process that no longer exists. A claim from elsewhere
    proves nothing either way, and stands."""
    if held.get("by") != _machine():
        return False
    try:
        os.kill(int(held["pid"]), 0)
    except ProcessLookupError:
        return True
    except (KeyError, TypeError, ValueError, OSError):  # no pid, or one alive under another user
        return False
    return False


def _release(claim: str, mine: dict, log) -> None:
    from .errors import FormatError
    try:
        held = _held(claim)
        if held and held.get("token") == mine["token"]:
            storage.remove(claim)
    except (InputError, FormatError) as e:  # the upload's own outcome stands; the claim is the user's to remove
        log(f"warning: could not remove {claim} ({e}); remove it before the next dfp shard to this prefix")
