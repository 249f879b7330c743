"""A split of a shard folder as flat arrays: label, shard, byte offsets and sizes per sample.

Built from manifest.json and the `.idx` files, without opening a tar. Memory is a handful of
numpy arrays (about 40 bytes a sample for images), never a Python object per sample.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import storage
from ..errors import FormatError
from ..formats import CLASSES, read_index_entries, read_manifest
from ..sampling import limit_per_class


class ShardIndex:
    """`root`: a shard folder, or a URL (then `cache_dir`/`cache_limit` say how sample bytes are read: see
    `remote.RemoteShards`)."""

    def __init__(self, root: str | os.PathLike, split: str, manifest: dict | None = None,
                 max_samples_per_class: int | None = None, seed: int = 0, cache_dir: str | None = None,
                 cache_limit: int = 0):
        url = storage.is_url(root)
        self.root = str(root).rstrip("/") if url else Path(storage.local_path(root))
        self.manifest = manifest or read_manifest(self.root)
        self.split = split
        self.modality = self.manifest["modality"]
        self.exts: list[str] = list(self.manifest["payload"])
        rows = [r for r in self.manifest["shards"] if r["split"] == split]
        self.paths = [storage.join(self.root, r["path"]) if url else str(self.root / r["path"]) for r in rows]
        self.remote = None
        if url:
            from .remote import RemoteShards
            self.remote = RemoteShards(self.paths, rows, cache_dir, cache_limit)
            self.remote.check()
        n = sum(r["samples"] for r in rows)
        c = len(self.exts)
        self.labels = np.empty(n, np.int8)
        self.shard = np.empty(n, np.int32)
        self.offsets = np.empty((n, c + 1), np.int64)  # payload components, then the JSON metadata
        self.sizes = np.empty((n, c + 1), np.int32)
        self.keys = np.empty(n, "S20")
        cols = self.exts + ["json"]
        pos = 0
        for si, r in enumerate(rows):
            label = CLASSES.index(r["class"])
            idx_path = self.paths[si][:-4]
            entries = _index_entries(idx_path + ".idx")
            if len(entries) != r["samples"]:
                raise FormatError(f"{idx_path}.idx: {len(entries)} samples, manifest says {r['samples']}; "
                                  "run `dfp verify`")
            for name, comp in entries:
                for j, ext in enumerate(cols):
                    self.offsets[pos, j], self.sizes[pos, j] = comp.get(ext, (-1, 0))
                self.keys[pos] = name.rsplit("/", 1)[-1].split(".", 1)[0]
                self.labels[pos] = label
                self.shard[pos] = si
                pos += 1
        if max_samples_per_class:
            sel = limit_per_class(self.labels, max_samples_per_class, seed, stream=11)
            for name in ("labels", "shard", "offsets", "sizes", "keys"):
                setattr(self, name, getattr(self, name)[sel])
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return {c: int(counts[i]) for i, c in enumerate(CLASSES)}

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            try:
                fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
            except OSError as e:
                raise _vanished(self.paths[shard], e) from None
        return fd

    def check_files(self) -> None:
        """Raise a one-line FormatError naming the first shard of the split that can no longer be opened (deleted
        or made unreadable after the run started): what a failure deep inside a loader is explained by."""
        if self.remote is not None:
            return self.remote.check()
        for path in self.paths:
            try:
                os.close(os.open(path, os.O_RDONLY))
            except OSError as e:
                raise _vanished(path, e) from None

    def _pread(self, shard: int, size: int, offset: int) -> bytes:
        if self.remote is not None:
            return self.remote.read(shard, offset, size)
        return os.pread(self._fd(shard), size, offset)

    def read(self, i: int) -> list[bytes] | None:
        """The payload components of sample i, or None when they cannot be read whole."""
        shard = int(self.shard[i])
        spans = [(int(self.offsets[i, j]), int(self.sizes[i, j])) for j in range(len(self.exts))]
        if any(off < 0 or size <= 0 for off, size in spans):
            return None
        if self.remote is not None and self.remote.cache is None and len(spans) > 1:
            return self._read_span(shard, spans)
        out = []
        for off, size in spans:
            b = self._pread(shard, size, off)
            if len(b) != size:  # truncated shard
                return None
            out.append(b)
        return out

    def read_many(self, idx) -> list[list[bytes] | None]:
        """`read` of each sample; ranged reads from storage run concurrently (one request a sample otherwise
        caps a loader that reads in one thread, DALI's feeding thread, at the storage's request rate)."""
        if self.remote is None or self.remote.cache is not None or len(idx) < 2:
            return [self.read(int(i)) for i in idx]
        from .remote import reader_pool
        return list(reader_pool().map(self.read, [int(i) for i in idx]))

    def _read_span(self, shard: int, spans: list[tuple[int, int]]) -> list[bytes] | None:
        """A sample's components (video frames) in one ranged read: they are adjacent in the tar."""
        lo, hi = min(o for o, _ in spans), max(o + s for o, s in spans)
        b = self._pread(shard, hi - lo, lo)
        if len(b) != hi - lo:
            return None
        return [b[o - lo:o - lo + s] for o, s in spans]

    def meta(self, i: int) -> dict:
        off, size = int(self.offsets[i, -1]), int(self.sizes[i, -1])
        try:
            return json.loads(self._pread(int(self.shard[i]), size, off))
        except (ValueError, OSError):
            return {}

    def prefetch(self, batches) -> None:
        """Remote shards with a cache: fetch them in the order these batches first need them."""
        if self.remote is None or self.remote.cache is None or not len(batches):
            return
        shards = self.shard[np.concatenate(list(batches))]
        _, first = np.unique(shards, return_index=True)
        self.remote.prefetch([int(shards[k]) for k in np.sort(first)])

    def key(self, i: int) -> str:
        return self.keys[i].decode("ascii")

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self.remote is not None:
            self.remote.close()

    def __getstate__(self):  # file descriptors do not travel to worker processes
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state


def _index_entries(idx_path: str) -> list:
    try:
        if storage.is_url(idx_path):
            import io
            return read_index_entries(io.StringIO(storage.read_text(idx_path)), idx_path)
        return read_index_entries(idx_path)
    except (OSError, ValueError, IndexError) as e:
        why = getattr(e, "strerror", None) or e
        raise FormatError(f"{idx_path}: unreadable shard index ({why}); run `dfp verify` or rebuild the shards") from None


def _vanished(path: str, e: OSError) -> FormatError:
    return FormatError(f"shard {path} cannot be opened ({e.strerror or e}); it was listed in the manifest when "
                       "the run started: restore or rebuild the shards")
