"""Prepared samples held in memory, readable by the loaders the way a `ShardIndex` is.

`dfp predict` packs raw files into one of these (a bounded chunk at a time) so they go through
the very eval path `dfp evaluate` uses on shards: same backend, same decoding, same scores.
"""
from __future__ import annotations

import numpy as np

from ..formats import CLASSES, FORMAT


class MemoryIndex:
    """Samples given as (payload components in `exts` order, metadata); sample i's key is str(i).

    Labels are unknown for raw files; they read as `real` so the loader's bookkeeping works, and
    callers must not treat them as ground truth."""

    def __init__(self, samples: list[tuple[list[bytes], dict]], modality: str, exts: list[str],
                 sample_rate: int | None = None, name: str = "raw files", split: str = "predict"):
        self.root, self.split = name, split
        self.modality, self.exts = modality, list(exts)
        self.manifest = {"format": FORMAT, "modality": modality, "classes": list(CLASSES), "payload": self.exts,
                         "sample_rate": sample_rate}
        for comps, _ in samples:
            if len(comps) != len(self.exts):
                raise ValueError(f"a sample has {len(comps)} payload components, expected {len(self.exts)}")
        self._comps = [comps for comps, _ in samples]
        self._meta = [meta for _, meta in samples]
        self.labels = np.zeros(len(samples), np.int8)
        self.keys = np.array([str(i) for i in range(len(samples))], "S20")

    def __len__(self) -> int:
        return len(self._comps)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return {c: int(counts[i]) for i, c in enumerate(CLASSES)}

    def read(self, i: int) -> list[bytes] | None:
        return list(self._comps[i])

    def meta(self, i: int) -> dict:
        return dict(self._meta[i])

    def key(self, i: int) -> str:
        return str(i)

    def close(self) -> None:
        pass
