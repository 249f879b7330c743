"""Shards at a URL: `s3://`, `gs://`, `http(s)://` or any scheme fsspec opens; local paths never come here.

Every read and write of a remote object goes through this module, so retries, their count and the one-line
errors live in one place. Credentials and endpoints come from the client library's standard environment
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, ... for s3fs; gcsfs's own for gs://), never from an
option of dfp, so nothing secret reaches config.json, logs or checkpoints; a URL carrying `user:password@` is
refused for the same reason.

A transient failure (timeout, dropped connection, HTTP 5xx or 429) is tried again with exponential backoff, up
to `RETRIES` times, and counted in a counter shared with the loader's worker processes (`retried()`); the
client libraries' own retry loops are turned off so every retry is seen. A missing object stops with one line
naming it.
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import time

from .errors import FormatError, InputError

RETRIES = 5
BACKOFF_S = 0.2  # first wait; doubled each try (0.2 + 0.4 + 0.8 + 1.6 + 3.2 s at most)
CHUNK = 8 << 20
# the package fsspec needs for a scheme, named in the error when it is absent
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp",
            "az": "adlfs", "abfs": "adlfs"}
# the user metadata that carries a file's sha256 with its object, so that a later upload can tell the object
# is that file without reading it back (S3 keeps the key in lower case: x-amz-meta-dfp-sha256)
SHA256_KEY = "dfp-sha256"
_METADATA_SCHEMES = ("s3", "s3a")
# where create() and replace() are conditional writes (tested with S3; gcsfs's are left untried)
CONDITIONAL_SCHEMES = ("s3", "s3a")
_TRANSIENT_NAMES = ("Timeout", "Connection", "Disconnected", "Payload", "Throttl", "SlowDown")

_fs: dict = {}
_counter = None


def is_url(path) -> bool:
    """True for `scheme://...` other than file://; a plain path (str or Path) is local."""
    s = str(path)
    return "://" in s and not s.startswith("file://") and s.split("://", 1)[0].isidentifier()


def local_path(path) -> str:
    s = str(path)
    return s[len("file://"):] if s.startswith("file://") else s


def join(root: str, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *(p.strip("/") for p in parts)])


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def check_url(url: str, label: str = "SHARDS") -> None:
    """A URL dfp can read: no credentials in it (they would be written to config.json), a client installed."""
    netloc = url.split("://", 1)[1].split("/", 1)[0]
    if "@" in netloc:
        raise InputError(f"{label} {scheme(url)}://...@{netloc.rsplit('@', 1)[1]}: credentials in the URL would be "
                         "written to config.json and logs; give them in the environment (e.g. AWS_ACCESS_KEY_ID)")
    filesystem(url)


# ---------------------------------------------------------------- the client
def filesystem(url: str):
    """One fsspec filesystem per scheme and process (a forked worker builds its own: clients do not survive fork)."""
    key = (os.getpid(), scheme(url))
    fs = _fs.get(key)
    if fs is None:
        fs = _fs[key] = _open_filesystem(scheme(url), url)
    return fs


def _open_filesystem(proto: str, url: str):
    pkg = PACKAGES.get(proto, f"fsspec backend for {proto}://")
    try:
        import fsspec
        cls = fsspec.get_filesystem_class(proto)
    except ImportError:
        raise InputError(f"{url}: reading {proto}:// needs the {pkg} package (pip install {pkg})") from None
    except ValueError:
        raise InputError(f"{url}: unknown URL scheme {proto}://; give a local folder or an s3://, gs:// or "
                         "http(s):// URL") from None
    try:
        fs = cls(skip_instance_cache=True, **_client_options(proto))
    except ImportError:
        raise InputError(f"{url}: reading {proto}:// needs the {pkg} package (pip install {pkg})") from None
    if proto in ("s3", "s3a"):
        fs.retries = 1  # s3fs's own loop (a class attribute): one try, then ours
    return fs


def _client_options(proto: str) -> dict:
    """The client's own retries off (ours count them); listings not cached (a deleted object must show)."""
    if proto in ("s3", "s3a"):
        return {"config_kwargs": {"retries": {"total_max_attempts": 1}}, "use_listings_cache": False}
    if proto in ("http", "https"):
        return {"use_listings_cache": False}
    return {}


# ---------------------------------------------------------------- retries
def shared_counter():
    """The retry counter, in shared memory so that forked or spawned loader workers add to the same count."""
    global _counter
    if _counter is None:
        import multiprocessing
        _counter = multiprocessing.Value("q", 0)
    return _counter


def adopt_counter(counter) -> None:
    """In a spawned worker: count into the parent's counter (a ShardIndex carries it across)."""
    global _counter
    if counter is not None:
        _counter = counter


def retried() -> int:
    """Transient failures absorbed by a retry in this run so far (all processes sharing the counter)."""
    return 0 if _counter is None else int(_counter.value)


def transient(e: BaseException) -> bool:
    """A failure worth trying again: timeouts, dropped connections, HTTP 5xx/429 (from aiohttp or botocore)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (TimeoutError, ConnectionError)):
            return True
        status = getattr(e, "status", None) or getattr(e, "code", None)
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode", status)
            code = resp.get("Error", {}).get("Code", "")
            if code in ("SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling"):
                return True
        if isinstance(status, int) and (status >= 500 or status == 429):
            return True
        if any(n in type(e).__name__ for n in _TRANSIENT_NAMES):
            return True
        e = e.__cause__ or e.__context__
    return False


def missing(url: str) -> FormatError:
    return FormatError(f"{url}: object not found in storage; it is listed in the shards' manifest: restore it "
                       "or rebuild the shards")


def call(url: str, fn, what: str = "read"):
    """fn() with transient failures retried and counted; a missing object or a lasting failure is one line."""
    for attempt in range(RETRIES + 1):
        try:
            return fn()
        except FileNotFoundError:
            raise missing(url) from None
        except PermissionError as e:
            raise InputError(f"{url}: access denied ({e}); check the credentials in the environment") from None
        except Exception as e:
            if not transient(e):
                raise InputError(f"{url}: cannot {what} ({type(e).__name__}: {_brief(e)})") from None
            if attempt == RETRIES:
                raise InputError(f"{url}: storage still failing after {RETRIES} retries ({type(e).__name__}: "
                                 f"{_brief(e)}); try again later") from None
        with shared_counter().get_lock():
            shared_counter().value += 1
        time.sleep(BACKOFF_S * 2 ** attempt * (1 + 0.25 * random.random()))


def _brief(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


# ---------------------------------------------------------------- operations
def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """The object's bytes [start, end) (a ranged read), or all of it."""
    return call(url, lambda: filesystem(url).cat_file(url, start=start, end=end))


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def size(url: str) -> int | None:
    """The object's size in bytes; None when it does not exist."""
    def info():
        try:
            if scheme(url) in ("http", "https"):
                return _http_size(url)
            return filesystem(url).info(url).get("size")
        except FileNotFoundError:
            return None
    return call(url, info, "look up")


def _http_size(url: str) -> int | None:
    """A HEAD request: fsspec's HTTP info() retries a failed HEAD as a GET and calls any failure 'not found',
    which would hide a 5xx from the retries and report a missing object."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as r:
            length = r.headers.get("Content-Length")
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):
            raise FileNotFoundError(url) from None
        if e.code in (401, 403):
            raise PermissionError(f"HTTP {e.code}") from None
        raise
    return int(length) if length is not None else -1  # size unknown (no Content-Length)


def exists(url: str) -> bool:
    return size(url) is not None


def download(url: str, dest: str, expect_size: int | None = None, expect_sha256: str | None = None) -> None:
    """The whole object into the local file `dest` (a name the caller renames into place), checked against the
    size and sha256 the manifest records: a changed object stops with one line naming it."""
    def fetch():
        h = hashlib.sha256()
        n = 0
        with filesystem(url).open(url, "rb", block_size=CHUNK) as src, open(dest, "wb") as out:
            while True:
                b = src.read(CHUNK)
                if not b:
                    break
                h.update(b)
                out.write(b)
                n += len(b)
        return n, h.hexdigest()
    n, digest = call(url, fetch)
    if expect_size is not None and n != expect_size:
        raise changed(url, f"{n} bytes, the manifest says {expect_size}")
    if expect_sha256 is not None and digest != expect_sha256:
        raise changed(url, f"sha256 {digest[:12]}..., the manifest says {expect_sha256[:12]}...")


def changed(url: str, why: str) -> FormatError:
    return FormatError(f"{url}: object changed since the manifest was written ({why}); restore it or rebuild "
                       "the shards")


def upload(local: str, url: str, sha256: str | None = None) -> None:
    """The local file to the URL; `sha256` (the file's) is recorded with the object where the scheme keeps user
    metadata (`recorded_sha256`)."""
    kw = {"Metadata": {SHA256_KEY: sha256}} if sha256 and scheme(url) in _METADATA_SCHEMES else {}
    call(url, lambda: filesystem(url).put_file(local, url, **kw), "upload")


def recorded_sha256(url: str) -> str | None:
    """The sha256 `upload` recorded with the object: None for one written without it (by another tool, or where
    the scheme keeps no user metadata)."""
    if scheme(url) not in _METADATA_SCHEMES:
        return None
    return call(url, lambda: filesystem(url).metadata(url), "look up").get(SHA256_KEY)


def create(url: str, data: bytes) -> bool:
    """Write the object only if there is none at the URL (a conditional write, If-None-Match): False if there is."""
    def put():
        try:
            filesystem(url).pipe_file(url, data, mode="create")
        except FileExistsError:
            return False
        return True
    return call(url, put, "write")


def replace(url: str, data: bytes, etag: str) -> bool:
    """Overwrite the object only while it is the version `etag` names (If-Match): False once it is another."""
    def put():
        try:
            filesystem(url).pipe_file(url, data, IfMatch=etag)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno == errno.EINVAL:  # s3fs's translation of 412 Precondition Failed
                return False
            raise
        return True
    return call(url, put, "write")


def etag(url: str) -> str | None:
    """The object's version tag; None when it does not exist."""
    def info():
        try:
            return filesystem(url).info(url).get("ETag")
        except FileNotFoundError:
            return None
    return call(url, info, "look up")


def remove(url: str) -> None:
    call(url, lambda: filesystem(url).rm_file(url), "remove")


def resolved(path) -> str:
    """What records name a shard set by: a URL as given, a local path resolved."""
    from pathlib import Path
    return str(path).rstrip("/") if is_url(path) else str(Path(local_path(path)).resolve())


def base_name(path) -> str:
    """The shard set's folder name (the last part of a URL's path)."""
    return resolved(path).rstrip("/").rsplit("/", 1)[-1]
