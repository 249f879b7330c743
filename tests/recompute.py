"""Recompute a metrics.json from predictions CSVs with scikit-learn alone, the way a user would.

Reads with `csv` + `float()` (not the project's reader), decides fake when score >= threshold, and
compares: counts and thresholds with ==, ratios within 1e-12.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

RATIO_KEYS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "specificity", "mcc")


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return np.array([int(r["label"]) for r in rows]), np.array([float(r["score"]) for r in rows])


def sk_metric_dict(y, s, t) -> dict:
    pred = (s >= t).astype(int)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, pred, labels=[0, 1]).ravel())
    return {
        "threshold": t,
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, labels=[0, 1], zero_division=0),
        "recall": skm.recall_score(y, pred, labels=[0, 1], zero_division=0),
        "f1": skm.f1_score(y, pred, labels=[0, 1], zero_division=0),
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "mcc": skm.matthews_corrcoef(y, pred),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def sk_eer(y, s) -> float:
    """EER on roc_curve's points (one per distinct score, and "nothing is fake"): where the segment between
    two neighbouring points crosses FPR = FNR."""
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    fnr = 1.0 - tpr
    for k in range(1, fpr.size):  # thresholds descending: FNR - FPR falls from 1 to -1
        g0, g1 = fnr[k - 1] - fpr[k - 1], fnr[k] - fpr[k]
        if g1 <= 0:
            w = 0.0 if g0 == g1 else g0 / (g0 - g1)
            return fpr[k - 1] + w * (fpr[k] - fpr[k - 1])
    raise AssertionError("the ROC ends at FPR = 1, FNR = 0")


def mismatches(rep: dict, y, s, threshold: float) -> list[str]:
    """Where one split's entry of metrics.json differs from the sklearn recomputation; [] when none."""
    bad = []
    for name, t in (("default", 0.5), ("tuned", threshold)):
        mine, ref = rep[name], sk_metric_dict(y, s, t)
        if mine["threshold"] != t:
            bad.append(f"{name}.threshold {mine['threshold']!r} != {t!r}")
        if mine["confusion_matrix"] != ref["confusion_matrix"]:
            bad.append(f"{name}.confusion_matrix {mine['confusion_matrix']} != {ref['confusion_matrix']}")
        bad += [f"{name}.{k} {mine[k]!r} != {ref[k]!r}" for k in RATIO_KEYS if abs(mine[k] - ref[k]) > 1e-12]
    if len(np.unique(y)) == 2:
        ref = {"auc": skm.roc_auc_score(y, s), "ap": skm.average_precision_score(y, s), "eer": sk_eer(y, s)}
        bad += [f"{k} {rep[k]!r} != {v!r}" for k, v in ref.items() if abs(rep[k] - v) > 1e-12]
    return bad


def run_mismatches(metrics: dict, run: Path) -> list[str]:
    """Every number of metrics.json against predictions_{val,test}.csv in `run`."""
    t = metrics["chosen"]["threshold"]
    bad = []
    for split in ("val", "test"):
        if metrics.get(split) is None:
            continue
        y, s = read_csv(run / f"predictions_{split}.csv")
        bad += [f"{split}: {m}" for m in mismatches(metrics[split], y, s, t)]
    return bad
