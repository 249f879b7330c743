"""`predictions_{val,test}.csv`: one row per sample, `key,source,label,score,group,attack`.

Every number of `metrics.json` must be recomputable from these files, ties included: a threshold is
itself one of the scores, so a score rounded on the way out (0.48693475 for 0.48693475127...) lands
on the other side of it. Scores are therefore written in Python's shortest round-trip form
(`repr(float(s))`), and `float(cell)` reads back the very float64 the metrics were computed from.

`group` and `attack` come from the sample's `KEY.json` and are empty where the dataset names none;
files written before these columns existed read back with both empty.
"""
from __future__ import annotations

import csv
import os
from typing import NamedTuple

import numpy as np

from . import atomic
from .formats import CLASSES, SampleMeta

FIELDS = ["key", "source", "label", "score", "group", "attack"]


UNKNOWN = SampleMeta()


class Predictions(NamedTuple):
    keys: list[str]
    labels: np.ndarray  # int64
    scores: np.ndarray  # float64
    meta: list[SampleMeta]

    @property
    def attacks(self) -> list[str]:
        return [m.attack for m in self.meta]

    @property
    def groups(self) -> list[str]:
        return [m.group for m in self.meta]


def format_score(score) -> str:
    """Shortest text that `float()` turns back into the same float64 (float32 scores widen exactly)."""
    return repr(float(score))


def attack_names(keys, meta: dict[str, SampleMeta]) -> list[str]:
    """The attack name of each key, "" where unknown (reals, plain datasets)."""
    return [meta.get(k, UNKNOWN).attack for k in keys]


def group_names(keys, meta: dict[str, SampleMeta]) -> list[str]:
    """The group of each key (a video, a speaker), "" where unknown."""
    return [meta.get(k, UNKNOWN).group for k in keys]


def write_predictions(path: str | os.PathLike, keys, labels, scores, meta: dict[str, SampleMeta]) -> None:
    """Written atomically (see `atomic`), rows in the order given."""
    with atomic.replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for k, label, s in zip(keys, labels, scores):
            m = meta.get(k, UNKNOWN)
            w.writerow([k, m.source, int(label), format_score(s), m.group, m.attack])


def _label_value(text: str) -> int:
    t = text.strip().lower()
    if t in CLASSES:
        return CLASSES.index(t)
    return int(float(t))


def read_prediction_table(path: str | os.PathLike) -> Predictions:
    """Every column of a predictions CSV; labels may be 0/1 or real/fake, and only `label` and `score` are
    required (missing text columns read as ""). ValueError for missing columns or no rows."""
    keys, labels, scores, meta = [], [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"label", "score"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for row in reader:
            keys.append(row.get("key") or "")
            labels.append(_label_value(row["label"]))
            scores.append(float(row["score"]))
            meta.append(SampleMeta.from_json(row))
    if not labels:
        raise ValueError(f"{path}: no rows")
    return Predictions(keys, np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64), meta)


def read_predictions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(labels as int64, scores as float64) of `read_prediction_table`."""
    table = read_prediction_table(path)
    return table.labels, table.scores
