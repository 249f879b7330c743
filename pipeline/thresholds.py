"""Decision thresholds, tuned exactly over every distinct score (pure numpy).

A decision is `fake` (the positive class, label 1) when `score >= threshold`. The candidate thresholds
are the distinct scores themselves: any threshold between two neighbouring distinct scores gives the
same decisions as the upper one, so nothing is lost and no fixed grid is needed. Scores are sorted once
(`np.unique`) and the confusion counts of every candidate come from cumulative sums: O(n log n).

Methods (`tune(labels, scores, method)`):

* `f1`            maximise F1 of the fake class.
* `youden`        maximise Youden's J = TPR - FPR (sensitivity + specificity - 1).
* `eer`           the point where FPR and FNR are closest (the equal error rate operating point; the EER
                  itself, `interpolated_eer`, lies on the segment to its neighbour).
* `precision:P`   the largest recall among thresholds whose precision is >= P.
* `recall:R`      the largest specificity among thresholds whose recall is >= R.

Tie rules (several candidates equally good):

* `f1`, `youden`, `eer`: the LARGEST tied threshold (the most conservative one: fewest fake decisions).
  Youden and EER are compared on exact integer counts, so ties are exact, not float noise.
* `precision:P`: among the thresholds with the maximal recall, the largest one; it has the fewest
  false positives, hence the highest precision of the tied set.
* `recall:R`: among the thresholds with the maximal specificity, the smallest one; it has the most
  true positives, hence the highest recall of the tied set.

`ThresholdUndefined` (a `ValueError`) is raised when the labels hold a single class, when scores are
NaN or infinite, or when a `precision:P` constraint cannot be met.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("f1", "youden", "eer")
PARAMETRISED = ("precision", "recall")
DEFAULT_THRESHOLD = 0.5


def threshold_record(entry: dict) -> dict:
    """A stored threshold record (a checkpoint's "threshold", an entry of "threshold_history") with its number
    under "threshold", as metrics.json's "chosen" has it; "value" in checkpoints and run folders written before
    the two used one key. The keys keep their order."""
    return {("threshold" if k == "value" else k): v for k, v in entry.items()}


class ThresholdUndefined(ValueError):
    """Tuning is undefined: a single class in the labels, non-finite scores, or an unreachable constraint."""


def parse_method(text: str) -> tuple[str, float | None]:
    """'f1' -> ('f1', None); 'precision:0.9' -> ('precision', 0.9). Case and surrounding spaces are ignored."""
    expected = "expected one of f1, youden, eer, precision:P, recall:R with P, R in [0, 1] (e.g. precision:0.9)"
    if not isinstance(text, str):
        raise ValueError(f"threshold method must be a string, got {type(text).__name__}; {expected}")
    t = text.strip().lower()
    if t in METHODS:
        return t, None
    name, sep, raw = t.partition(":")
    name = name.strip()
    if name in METHODS and sep:
        raise ValueError(f"threshold method {text!r}: {name} takes no parameter; {expected}")
    if name in PARAMETRISED:
        if not sep or not raw.strip():
            raise ValueError(f"threshold method {text!r} needs a target value, e.g. '{name}:0.9'")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"threshold method {text!r}: {raw.strip()!r} is not a number; "
                             f"expected e.g. '{name}:0.9'") from None
        if not 0.0 <= value <= 1.0:  # also rejects nan
            raise ValueError(f"threshold method {text!r}: the target {name} must be in [0, 1]")
        return name, value
    raise ValueError(f"unknown threshold method {text!r}; {expected}")


def method_key(name: str, value: float | None = None) -> str:
    """Canonical text of a parsed method: ('precision', 0.9) -> 'precision:0.9' (the key in metrics.json)."""
    return name if value is None else f"{name}:{format(value, '.15g')}"


def canonical_method(text: str) -> str:
    """'Precision:0.90' -> 'precision:0.9'; raises ValueError like `parse_method`."""
    return method_key(*parse_method(text))


def check_inputs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D copies: labels as int64 in {0, 1}, scores as float64, equal lengths.

    Raises ValueError for bad shapes or label values, ThresholdUndefined for NaN/inf scores or no samples.
    """
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length ({y.size} vs {s.size})")
    if y.size == 0:
        raise ThresholdUndefined("no samples: labels and scores are empty")
    if y.dtype == bool:
        y = y.astype(np.int64)
    bad = ~((y == 0) | (y == 1))
    if np.any(bad):
        raise ValueError(f"labels must be 0 (real) or 1 (fake); found {y[bad][0]!r}")
    y = y.astype(np.int64)
    finite = np.isfinite(s)
    if not np.all(finite):
        n_nan = int(np.isnan(s).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise ThresholdUndefined(f"scores contain {n_nan} NaN and {n_inf} infinite values out of {s.size}")
    return y, s


@dataclass(frozen=True)
class Candidates:
    """Confusion counts for every candidate threshold `thr` (ascending distinct scores)."""

    thr: np.ndarray  # float64, ascending
    tp: np.ndarray   # int64, positives with score >= thr
    fp: np.ndarray   # int64, negatives with score >= thr
    P: int
    N: int


def candidates(labels, scores) -> Candidates:
    """Every distinct score as a candidate threshold, with the confusion counts there (one sort)."""
    y, s = check_inputs(labels, scores)
    P = int(y.sum())
    N = int(y.size - P)
    if P == 0 or N == 0:
        only = "real" if P == 0 else "fake"
        raise ThresholdUndefined(f"labels hold a single class ({only} only, n={y.size}): "
                                 "threshold tuning is undefined")
    thr, inv = np.unique(s, return_inverse=True)  # the one sort
    inv = inv.reshape(-1)
    pos = np.bincount(inv[y == 1], minlength=thr.size)
    neg = np.bincount(inv[y == 0], minlength=thr.size)
    tp = np.cumsum(pos[::-1])[::-1].astype(np.int64)
    fp = np.cumsum(neg[::-1])[::-1].astype(np.int64)
    return Candidates(thr, tp, fp, P, N)


def _last(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[-1])


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _eer_index(c: Candidates) -> int:
    d = np.abs(c.fp * c.P - (c.P - c.tp) * c.N)  # |FPR - FNR| * P * N, exact integers
    return _last(d == d.min())


def tune_candidates(c: Candidates, name: str, value: float | None) -> float:
    """The threshold `name` (with its target `value`, if parametrised) picks among the candidates."""
    tp, fp, P, N = c.tp, c.fp, c.P, c.N
    if name == "f1":
        # F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + P): one correctly rounded division, so equal
        # fractions give equal floats and ties are exact.
        f1 = (2 * tp) / (tp + fp + P)
        i = _last(f1 == f1.max())
    elif name == "youden":
        j = tp * N - fp * P  # J * P * N, exact integers
        i = _last(j == j.max())
    elif name == "eer":
        i = _eer_index(c)
    elif name == "precision":
        precision = tp / (tp + fp)  # tp + fp >= 1 at every candidate (the samples at the threshold)
        ok = precision >= value
        if not np.any(ok):
            raise ThresholdUndefined(f"no threshold reaches precision >= {value:g} "
                                     f"(the highest reachable is {precision.max():.4f})")
        best_tp = tp[ok].max()
        i = _last(ok & (tp == best_tp))
    elif name == "recall":
        ok = (tp / P) >= value  # the smallest candidate has recall 1, so ok is never empty
        best_fp = fp[ok].min()
        i = _first(ok & (fp == best_fp))
    else:  # parse_method guards this
        raise ValueError(f"unknown threshold method {name!r}")
    return float(c.thr[i])


def tune(labels, scores, method: str = "f1") -> float:
    """The threshold chosen by `method` (see the module docstring), as a plain float."""
    name, value = parse_method(method)
    return tune_candidates(candidates(labels, scores), name, value)


def operating_points(c: Candidates) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) at every achievable operating point, thresholds ascending: one per distinct score (tied
    scores move together) and, last, the point above the highest score where nothing is called fake."""
    fpr = np.r_[c.fp / c.N, 0.0]
    fnr = np.r_[(c.P - c.tp) / c.P, 1.0]
    return fpr, fnr


def interpolated_eer(c: Candidates) -> float:
    """Where FPR = FNR on the ROC through the achievable points, linear between neighbouring points (what a
    threshold drawn at random between the two achieves), so never below what some decision rule reaches.
    On tie-free scores this is within half a step of ASVspoof's nearest-point (FPR + FNR) / 2."""
    fpr, fnr = operating_points(c)
    d = fpr - fnr  # 1 at the lowest score, -1 above the highest, never increasing
    i = _last(d >= 0)
    if d[i] == 0:
        return float(fpr[i])
    w = d[i] / (d[i] - d[i + 1])  # d[i + 1] < 0 here: the last point has d = -1
    return float(fpr[i] + w * (fpr[i + 1] - fpr[i]))


def eer_point(labels, scores) -> tuple[float, float] | None:
    """(threshold, eer): the `eer` method's threshold (the candidate nearest FPR = FNR) and the equal error
    rate, `interpolated_eer`. None when the labels hold a single class."""
    y, s = check_inputs(labels, scores)
    if y.min() == y.max():
        return None
    c = candidates(y, s)
    return float(c.thr[_eer_index(c)]), interpolated_eer(c)


def all_thresholds(labels, scores, extra=()) -> dict[str, float]:
    """{"f1": t, "youden": t, "eer": t} plus one entry per extra method, keyed canonically
    ("Precision:0.90" -> "precision:0.9"). Raises ThresholdUndefined if any of them is undefined."""
    keys = list(METHODS)
    for text in extra:
        k = canonical_method(text)
        if k not in keys:
            keys.append(k)
    c = candidates(labels, scores)
    return {k: tune_candidates(c, *parse_method(k)) for k in keys}


def sweep(labels, scores) -> dict[str, np.ndarray]:
    """Metrics at every candidate threshold (ascending distinct scores), for plots.

    Keys: threshold, tp, fp, tn, fn, precision, recall, f1, specificity, fpr, fnr, youden.
    """
    c = candidates(labels, scores)
    tp, fp, P, N = c.tp, c.fp, c.P, c.N
    fn = P - tp
    tn = N - fp
    recall = tp / P
    specificity = tn / N
    return {
        "threshold": c.thr.copy(),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "precision": tp / (tp + fp),
        "recall": recall,
        "f1": (2 * tp) / (tp + fp + P),
        "specificity": specificity,
        "fpr": fp / N,
        "fnr": fn / P,
        "youden": recall + specificity - 1.0,
    }
