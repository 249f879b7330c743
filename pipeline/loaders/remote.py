"""Sample bytes of one split whose shards are at a URL: whole shards through a local cache, or ranged reads.

With a cache folder that can hold the split (`--cache-dir`, `--cache-limit`), each shard is fetched once, whole
and checked against the manifest's sha256, ahead of the epoch's plan by a background thread (in the order the
plan first needs them), and samples are read from the local copy. Otherwise each sample is one ranged read of
its bytes: no local disk, one request a sample, and a changed object is caught by its size only.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .. import storage
from ..errors import warn
from ..shardcache import ShardCache

CHECK_THREADS = 8
_DEFAULT = {"cache_dir": None, "cache_limit": 20 << 30}


_POOL: dict = {}
READ_THREADS = 16


def reader_pool() -> ThreadPoolExecutor:
    """Threads for concurrent ranged reads, one pool per process (a forked worker makes its own)."""
    pool = _POOL.get(os.getpid())
    if pool is None:
        pool = _POOL[os.getpid()] = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="dfp-read")
    return pool


def set_cache(cache_dir: str | None, cache_limit: int) -> None:
    """The cache every loader of this process uses when its options name none (the commands' --cache-dir)."""
    _DEFAULT.update(cache_dir=cache_dir, cache_limit=int(cache_limit))


class RemoteShards:
    def __init__(self, urls: list[str], rows: list[dict], cache_dir: str | None = None, cache_limit: int = 0):
        if cache_dir is None:
            cache_dir, cache_limit = _DEFAULT["cache_dir"], _DEFAULT["cache_limit"]
        self.urls = urls
        self.sizes = [int(r["bytes"]) for r in rows]
        self.shas = [r["sha256"] for r in rows]
        self.cache = None
        if cache_dir:
            if sum(self.sizes) <= cache_limit:
                self.cache = ShardCache(cache_dir, cache_limit)
            else:
                warn(f"{sum(self.sizes) / 2**30:.2f} GiB of shards do not fit --cache-limit "
                     f"{cache_limit / 2**30:.2f} GiB; reading samples by ranged reads instead")
        self.counter = storage.shared_counter()
        self._fds: dict[int, int] = {}
        self._thread = None

    def check(self) -> None:
        """Every shard of the split is there with the size the manifest records; else one line naming it."""
        with ThreadPoolExecutor(CHECK_THREADS) as pool:
            found = list(pool.map(storage.size, self.urls))
        for url, got, want in zip(self.urls, found, self.sizes):
            if got is None:
                raise storage.missing(url)
            if got >= 0 and got != want:
                raise storage.changed(url, f"{got} bytes, the manifest says {want}")

    def read(self, shard: int, offset: int, size: int) -> bytes:
        if self.cache is None:
            return storage.read_bytes(self.urls[shard], offset, offset + size)
        return os.pread(self._fd(shard), size, offset)

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            for attempt in (0, 1):
                path = self.cache.fetch(self.urls[shard], self.sizes[shard], self.shas[shard])
                try:
                    fd = self._fds[shard] = os.open(path, os.O_RDONLY)
                    break
                except FileNotFoundError:  # evicted by another process between the fetch and the open
                    if attempt:
                        raise
        return fd

    def prefetch(self, order: list[int]) -> None:
        """Fetch these shards into the cache in this order, in the background; a failure is left to the read
        that needs the shard, which reports it."""
        if self.cache is None or (self._thread is not None and self._thread.is_alive()):
            return

        def run():
            for si in order:
                try:
                    self.cache.fetch(self.urls[si], self.sizes[si], self.shas[si])
                except Exception:
                    return
        self._thread = threading.Thread(target=run, name="dfp-shard-prefetch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"], state["_thread"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        storage.adopt_counter(self.counter)
