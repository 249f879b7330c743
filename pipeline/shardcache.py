"""A bounded local folder of whole shards fetched from a URL, shared by every process of one node.

Entries are named by the sha256 the manifest records, so a shard changed in storage is never taken for the
cached copy, and two runs (or the ranks of one run) on the same shards share one copy. A fetch holds a lock
file per entry (the other processes wait for it rather than fetch the same shard again), writes to a temporary
name, checks size and sha256 against the manifest and renames into place: a cache entry is always whole.
When the folder would grow past its limit, the entries used least recently go first; a process that has an
evicted shard open keeps reading it (POSIX keeps an unlinked open file).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from . import storage

SUFFIX = ".tar"


class ShardCache:
    def __init__(self, folder: str | os.PathLike, limit: int):
        self.folder, self.limit = Path(folder), int(limit)
        self.folder.mkdir(parents=True, exist_ok=True)

    def entry(self, sha256: str) -> Path:
        return self.folder / f"{sha256}{SUFFIX}"

    def fetch(self, url: str, size: int, sha256: str) -> Path:
        """The local copy of shard `url`, fetched first when absent."""
        path = self.entry(sha256)
        if path.is_file():
            _touch(path)
            return path
        with open(self.folder / f"{sha256}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not path.is_file():  # another process may have fetched it while this one waited
                    self._make_room(size, keep=path)
                    tmp = path.with_name(f"{path.name}.part-{os.getpid()}")
                    try:
                        storage.download(url, str(tmp), size, sha256)
                        os.replace(tmp, path)
                    finally:
                        tmp.unlink(missing_ok=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        _touch(path)
        return path

    def _make_room(self, size: int, keep: Path) -> None:
        entries = []
        for p in self.folder.glob(f"*{SUFFIX}"):
            try:
                st = p.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in entries) + size
        for _, s, p in sorted(entries):
            if total <= self.limit:
                break
            if p != keep:
                p.unlink(missing_ok=True)
                total -= s

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob(f"*{SUFFIX}"))


def _touch(path: Path) -> None:
    """Mark as recently used (eviction goes by modification time)."""
    try:
        os.utime(path)
    except OSError:
        pass


def parse_size(text: str) -> int:
    """'20G', '500M', '1.5T', '4096' -> bytes (powers of 1024)."""
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMGT" and t[-1:] else t
    value = float(num)  # ValueError for the caller's one-line message
    if value < 0:
        raise ValueError(text)
    return int(value * mult)
