"""Direction-free AUCs of single features, a grouped cross-validated classifier over all of them, flags.

Numeric features: the AUC of the value itself, missing values (NaN, e.g. the JPEG quality of a PNG) ranked
below every value. Categorical features: one-vs-rest, the largest AUC of "is category c" over the categories
(an indicator's AUC is 0.5 + |share among fakes - share among reals| / 2, so a feature with many rare
categories does not look predictive by chance, as encoding each category by its class share would).
Every AUC is max(a, 1 - a): a feature that predicts either class is a shortcut.
"""
from __future__ import annotations

import math

import numpy as np

MAX_CATEGORIES = 20  # one-hot columns per categorical feature in the combined classifier (the rest: "other")


def _numeric(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else float(v) for v in values], np.float64)


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    a = float(roc_auc_score(y, score))
    return max(a, 1.0 - a)


def numeric_auc(y: np.ndarray, x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    low = (finite.min() - 1.0) if finite.size else 0.0
    return _auc(y, np.where(np.isfinite(x), x, low))


def categorical_auc(y: np.ndarray, values: list) -> float:
    cats = set(values)
    if len(cats) < 2:
        return 0.5
    arr = np.asarray(values, object)
    return max(_auc(y, (arr == c).astype(np.float64)) for c in cats)


def is_categorical(values: list) -> bool:
    return any(isinstance(v, str) for v in values)


def summary(values: list, categorical: bool) -> dict:
    if categorical:
        from collections import Counter
        counts = Counter(values)
        n = max(len(values), 1)
        return {"n": len(values), "top": {k: round(c / n, 4) for k, c in counts.most_common(5)},
                "categories": len(counts)}
    x = _numeric(values)
    f = x[np.isfinite(x)]
    if not f.size:
        return {"n": len(values), "missing": len(values)}
    q = np.percentile(f, [5, 50, 95])
    return {"n": len(values), "missing": int(len(x) - f.size), "mean": _r(f.mean()), "std": _r(f.std()),
            "p5": _r(q[0]), "median": _r(q[1]), "p95": _r(q[2]), "distinct": int(np.unique(f).size)}


def _r(v: float) -> float:
    return float(f"{v:.6g}")


def design(rows: list[dict], names: list[str]) -> np.ndarray:
    """Numeric columns (NaN filled with the column's minimum - 1, plus a missing indicator where any is missing),
    standardised, and one-hot columns of the categorical features."""
    cols = []
    for name in names:
        values = [r.get(name) for r in rows]
        if is_categorical(values):
            values = ["" if v is None else str(v) for v in values]
            from collections import Counter
            keep = [c for c, _ in Counter(values).most_common(MAX_CATEGORIES)]
            arr = np.asarray(values, object)
            cols += [(arr == c).astype(np.float64) for c in keep]
            continue
        x = _numeric(values)
        ok = np.isfinite(x)
        if not ok.all():
            cols.append((~ok).astype(np.float64))
            x = np.where(ok, x, (x[ok].min() - 1.0) if ok.any() else 0.0)
        sd = x.std()
        cols.append((x - x.mean()) / sd if sd > 0 else np.zeros_like(x))
    return np.stack(cols, 1) if cols else np.zeros((len(rows), 0))


def combined_auc(X: np.ndarray, y: np.ndarray, groups: list, seed: int = 0) -> tuple[float | None, str]:
    """Out-of-fold AUC of a small gradient-boosted classifier over all features, folds by group (a group's
    samples are never split between fitting and scoring). None when there are too few groups per class."""
    g = np.unique(np.asarray([str(v) for v in groups]), return_inverse=True)[1]
    per_class = min(len(np.unique(g[y == k])) for k in (0, 1))
    folds = min(5, per_class)
    if folds < 2 or X.shape[1] == 0:
        return None, "too few groups per class to cross-validate"
    from threadpoolctl import threadpool_limits
    oof = np.zeros(len(y))
    cv = _folds(folds, g, seed)
    with threadpool_limits(1):  # small fits: OpenMP threads only wait on each other (and on a loaded machine, long)
        _fit_folds(X, y, g, cv, oof, seed)
    return _auc(y, oof), f"HistGradientBoosting, {folds}-fold {type(getattr(cv, 'cv', cv)).__name__}, out-of-fold AUC"


def _folds(folds: int, g: np.ndarray, seed: int):
    """Stratified group folds; with one sample per group that is plain stratified folds, and with very many
    groups GroupKFold (StratifiedGroupKFold's search grows with groups x folds; many groups balance anyway)."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold
    n_groups = int(g.max()) + 1 if len(g) else 0
    if n_groups == len(g):
        return _Ungrouped(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    if n_groups > MAX_STRATIFIED_GROUPS:
        return GroupKFold(n_splits=folds)
    return StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)


MAX_STRATIFIED_GROUPS = 2000


class _Ungrouped:
    """A splitter that ignores the groups argument (every group is one sample)."""

    def __init__(self, cv):
        self.cv = cv

    def split(self, X, y, groups=None):
        return self.cv.split(X, y)


def _fit_folds(X, y, g, cv, oof, seed) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    for fit, held in cv.split(X, y, g):
        if len(np.unique(y[fit])) < 2:
            oof[held] = 0.5
            continue
        leaf = max(2, min(10, len(fit) // 20))  # small audits still get splits; larger ones smoother leaves
        clf = HistGradientBoostingClassifier(max_iter=60, max_depth=3, learning_rate=0.1, min_samples_leaf=leaf,
                                             early_stopping=False, random_state=seed)
        clf.fit(X[fit], y[fit])
        oof[held] = clf.predict_proba(X[held])[:, 1]


def score(rows: list[dict], y: np.ndarray, groups: list, flag_at: float, remedy, seed: int = 0) -> dict:
    """The audit block: per-feature AUCs and class summaries, the combined AUC, the flagged features."""
    names = sorted({k for r in rows for k in r})
    feats = []
    for name in names:
        values = [r.get(name) for r in rows]
        cat = is_categorical(values)
        if cat:
            values = ["" if v is None else str(v) for v in values]
            auc = categorical_auc(y, values)
        else:
            auc = numeric_auc(y, _numeric(values))
        feats.append({"name": name, "auc": round(auc, 4), "kind": "categorical" if cat else "numeric",
                      "real": summary([v for v, k in zip(values, y) if k == 0], cat),
                      "fake": summary([v for v, k in zip(values, y) if k == 1], cat)})
    feats.sort(key=lambda f: (-f["auc"], f["name"]))
    comb, how = combined_auc(design(rows, names), y, groups, seed)
    flagged = [f["name"] for f in feats if f["auc"] >= flag_at]
    return {"features": feats, "combined_auc": None if comb is None or math.isnan(comb) else round(comb, 4),
            "combined_model": how, "flagged": flagged, "remedies": {n: remedy(n) or GENERIC for n in flagged}}


GENERIC = "make this property alike in both classes (re-encode or collect matched data), or drop the files that differ"
