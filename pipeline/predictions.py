"""`predictions_{val,test}.csv`: one row per sample, `key,source,label,score`.

Every number of `metrics.json` must be recomputable from these files, ties included: a threshold is
itself one of the scores, so a score rounded on the way out (0.48693475 for 0.48693475127...) lands
on the other side of it. Scores are therefore written in Python's shortest round-trip form
(`repr(float(s))`), and `float(cell)` reads back the very float64 the metrics were computed from.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .formats import CLASSES

FIELDS = ["key", "source", "label", "score"]


def format_score(score) -> str:
    """Shortest text that `float()` turns back into the same float64 (float32 scores widen exactly)."""
    return repr(float(score))


def write_predictions(path: str | os.PathLike, keys, labels, scores, sources: dict[str, str]) -> None:
    """Atomic write (temporary name, then rename), rows in the order given."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for k, label, s in zip(keys, labels, scores):
            w.writerow([k, sources.get(k, ""), int(label), format_score(s)])
    os.replace(tmp, path)


def _label_value(text: str) -> int:
    t = text.strip().lower()
    if t in CLASSES:
        return CLASSES.index(t)
    return int(float(t))


def read_predictions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(labels as int64, scores as float64) from a `key,source,label,score` CSV; labels may be 0/1 or
    real/fake. ValueError for missing columns or no rows."""
    labels, scores = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"label", "score"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for row in reader:
            labels.append(_label_value(row["label"]))
            scores.append(float(row["score"]))
    if not labels:
        raise ValueError(f"{path}: no rows")
    return np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64)
