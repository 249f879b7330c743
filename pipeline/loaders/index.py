"""A split of a shard folder as flat arrays: label, shard, byte offsets and sizes per sample.

Built from manifest.json and the `.idx` files, without opening a tar. Memory is a handful of
numpy arrays (about 40 bytes a sample for images), never a Python object per sample.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import FormatError
from ..formats import CLASSES, read_index_entries, read_manifest
from ..sampling import limit_per_class


class ShardIndex:
    def __init__(self, root: str | os.PathLike, split: str, manifest: dict | None = None,
                 max_samples_per_class: int | None = None, seed: int = 0):
        self.root = Path(root)
        self.manifest = manifest or read_manifest(self.root)
        self.split = split
        self.modality = self.manifest["modality"]
        self.exts: list[str] = list(self.manifest["payload"])
        rows = [r for r in self.manifest["shards"] if r["split"] == split]
        self.paths = [str(self.root / r["path"]) for r in rows]
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
            idx_path = self.root / r["path"][:-4]
            entries = _index_entries(Path(str(idx_path) + ".idx"))
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
        for path in self.paths:
            try:
                os.close(os.open(path, os.O_RDONLY))
            except OSError as e:
                raise _vanished(path, e) from None

    def read(self, i: int) -> list[bytes] | None:
        """The payload components of sample i, or None when they cannot be read whole."""
        fd = self._fd(int(self.shard[i]))
        out = []
        for j in range(len(self.exts)):
            off, size = int(self.offsets[i, j]), int(self.sizes[i, j])
            if off < 0 or size <= 0:
                return None
            b = os.pread(fd, size, off)
            if len(b) != size:  # truncated shard
                return None
            out.append(b)
        return out

    def meta(self, i: int) -> dict:
        fd = self._fd(int(self.shard[i]))
        off, size = int(self.offsets[i, -1]), int(self.sizes[i, -1])
        try:
            return json.loads(os.pread(fd, size, off))
        except (ValueError, OSError):
            return {}

    def key(self, i: int) -> str:
        return self.keys[i].decode("ascii")

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self):  # file descriptors do not travel to worker processes
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state


def _index_entries(idx_path: Path) -> list:
    try:
        return read_index_entries(idx_path)
    except (OSError, ValueError, IndexError) as e:
        why = getattr(e, "strerror", None) or e
        raise FormatError(f"{idx_path}: unreadable shard index ({why}); run `dfp verify` or rebuild the shards") from None


def _vanished(path: str, e: OSError) -> FormatError:
    return FormatError(f"shard {path} cannot be opened ({e.strerror or e}); it was listed in the manifest when "
                       "the run started: restore or rebuild the shards")
