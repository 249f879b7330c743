"""Metrics from labels and scores (scikit-learn), and the `metrics.json` document of a run.

Labels: real = 0, fake = 1; fake is the positive class, so precision, recall and F1 are the fake
class's. A decision is fake when `score >= threshold`.

`metric_dict` returns M = {"threshold", "accuracy", "balanced_accuracy", "precision", "recall", "f1",
"specificity", "mcc", "confusion_matrix": [[tn, fp], [fn, tp]]}. Ratios whose denominator is zero
(e.g. precision when nothing is called fake, recall when there are no fakes) are 0.0, scikit-learn's
`zero_division=0` convention. AUC, AP and EER are None (JSON null) when a split holds a single class.
All values are plain Python floats and ints.

Where the fakes of a split name their attack, the split also carries "by_attack" (see `by_attack`).

Every split block also carries the field's figures (`field_metrics`): ASVspoof 5's "min_dcf", "act_dcf" and
"cllr" under the cost model "dcf" (`pipeline.dcf`), the LLR they were computed from ("llr", `pipeline.calibration`:
fitted on val where the run has one), the "ece" of the calibrated probability in "ece_bins" bins, and, where
samples share a group (the frames of a video), "video" (see `video_metrics`).
"""
from __future__ import annotations

import warnings as _warnings

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score,
                             confusion_matrix, f1_score, matthews_corrcoef, precision_score,
                             recall_score, roc_auc_score)

from .calibration import ECE_BINS, Calibration, ece, fit as fit_calibration
from .dcf import DEFAULT_COSTS, CostModel, act_dcf, cllr, min_dcf
from .thresholds import (DEFAULT_THRESHOLD, METHODS, ThresholdUndefined, candidates, canonical_method, check_inputs,
                         eer_point, parse_method, tune, tune_candidates)

CURVE_KEYS = ("auc", "ap", "eer")
COST_KEYS = ("min_dcf", "act_dcf", "cllr")
# parentheses keep it apart from any dataset's own attack names (A07, Deepfakes, ...)
UNNAMED_ATTACK = "(unnamed)"


def _validate(labels, scores, split: str = "") -> tuple[np.ndarray, np.ndarray]:
    """check_inputs with plain ValueErrors naming the split (NaN scores are bad input here, not 'undefined')."""
    where = f"{split}: " if split else ""
    try:
        return check_inputs(labels, scores)
    except ValueError as e:  # includes ThresholdUndefined
        raise ValueError(f"{where}{e}") from None


def metric_dict(labels, scores, threshold: float) -> dict:
    """Metric dict M at `threshold` (decision fake when score >= threshold)."""
    y, s = _validate(labels, scores)
    # Both sides float64: the threshold is one of the float64 scores, and a float32 side would make NumPy
    # compare in float32, where a score a hair below the threshold can round onto it and flip the decision.
    t = float(threshold)
    if not np.isfinite(t):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    pred = (s >= t).astype(np.int64)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    with _warnings.catch_warnings():
        # single-class splits: sklearn warns about ill-defined metrics; zero_division=0 decides the value.
        _warnings.simplefilter("ignore")
        m = {
            "threshold": t,
            "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "precision": float(precision_score(y, pred, labels=[0, 1], pos_label=1, zero_division=0)),
            "recall": float(recall_score(y, pred, labels=[0, 1], pos_label=1, zero_division=0)),
            "f1": float(f1_score(y, pred, labels=[0, 1], pos_label=1, zero_division=0)),
            "specificity": float(tn / (tn + fp)) if tn + fp else 0.0,
            "mcc": float(matthews_corrcoef(y, pred)),
            "confusion_matrix": [[tn, fp], [fn, tp]],
        }
    return m


def curve_metrics(labels, scores) -> dict:
    """{"auc": ROC AUC, "ap": average precision, "eer": equal error rate}; all None for a single class."""
    y, s = _validate(labels, scores)
    if y.min() == y.max():
        return {k: None for k in CURVE_KEYS}
    point = eer_point(y, s)
    return {
        "auc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "eer": point[1],
    }


def val_summary(labels, scores) -> dict:
    """The per-epoch validation figures: {"f1": F1 at 0.5, "auc", "f1_tuned": F1 at the F1-tuned threshold}.
    AUC and tuned F1 are None for a single class; F1 is 0.0 without samples."""
    out = {"f1": metric_dict(labels, scores, DEFAULT_THRESHOLD)["f1"] if len(labels) else 0.0, "auc": None,
           "f1_tuned": None}
    if len(labels) and len(np.unique(labels)) == 2:
        out["auc"] = curve_metrics(labels, scores)["auc"]
        try:
            out["f1_tuned"] = metric_dict(labels, scores, tune(labels, scores, "f1"))["f1"]
        except ThresholdUndefined:
            pass
    return out


def field_metrics(labels, scores, calibration: Calibration | None = None, costs: CostModel = DEFAULT_COSTS) -> dict:
    """{"min_dcf", "act_dcf", "cllr", "dcf", "llr", "ece", "ece_bins"}: minDCF on the scores themselves, actDCF
    and Cllr on the bona fide LLR of `calibration` (identity: logit(score)), ECE of its probability. The three
    costs are None for a single class."""
    y, s = _validate(labels, scores)
    cal = calibration or Calibration.identity()
    out = {k: None for k in COST_KEYS}
    if y.min() != y.max():
        llr = cal.bonafide_llr(s)
        out = {"min_dcf": min_dcf(y, s, costs), "act_dcf": act_dcf(y, llr, costs), "cllr": cllr(y, llr)}
    return {**out, "dcf": costs.as_dict(), "llr": cal.as_dict(), "ece": ece(y, cal.probability(s)),
            "ece_bins": ECE_BINS}


def video_scores(labels, scores, groups) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(label, mean score, name) per group, groups in order of first appearance; a sample without a group
    is a group of its own. None when no group holds more than one sample. ValueError naming the first group
    that holds both labels."""
    y, s = _validate(labels, scores)
    names = ["" if g is None else str(g) for g in groups]
    if len(names) != y.size:
        raise ValueError(f"{len(names)} group names for {y.size} samples")
    keys = [n if n else ("", i) for i, n in enumerate(names)]  # ("", i) is never a name
    index: dict = {}
    inv = np.fromiter((index.setdefault(k, len(index)) for k in keys), np.int64, count=y.size)
    if len(index) == y.size:
        return None
    count = np.bincount(inv)
    fakes = np.bincount(inv, weights=y)
    mixed = np.flatnonzero((fakes > 0) & (fakes < count))
    if mixed.size:
        first = next(k for k in index if index[k] == mixed[0])
        raise ValueError(f"group {first!r} holds both real and fake samples, so it is not one video")
    order = [k if isinstance(k, str) else "" for k in index]
    return (fakes > 0).astype(np.int64), np.bincount(inv, weights=s) / count, order


def video_metrics(labels, scores, groups, costs: CostModel = DEFAULT_COSTS) -> dict | None:
    """{"n": videos, "auc", "ap", "eer", "min_dcf"} on the mean frame score per group (DeepfakeBench's video
    level); the four are None for a single class. None when no group holds more than one sample."""
    videos = video_scores(labels, scores, groups)
    if videos is None:
        return None
    vy, vs, _ = videos
    out = {"n": int(vy.size), **curve_metrics(vy, vs), "min_dcf": None}
    if vy.min() != vy.max():
        out["min_dcf"] = min_dcf(vy, vs, costs)
    return out


def by_attack(labels, scores, attacks, threshold: float, costs: CostModel = DEFAULT_COSTS) -> dict | None:
    """{NAME: {"n", "auc", "eer", "recall", "min_dcf"}} for one split: every real of the split against the fakes
    of attack NAME (AUC, EER, minDCF; None without reals) and the recall of those fakes at `threshold`.

    `attacks` holds one name per sample; the names of reals are ignored. Fakes without a name are
    grouped under UNNAMED_ATTACK (listed last, the named ones sorted) when another fake has one.
    None when no fake has a name, so a dataset without attacks gets no `by_attack` entry at all."""
    y, s = _validate(labels, scores)
    names = np.asarray(["" if a is None else str(a) for a in attacks], dtype=object)
    if names.size != y.size:
        raise ValueError(f"{names.size} attack names for {y.size} samples")
    fake_names = names[y == 1]
    named = sorted(set(fake_names) - {""})
    if not named:
        return None
    fake_names = np.where(fake_names == "", UNNAMED_ATTACK, fake_names)
    real_s, fake_s = s[y == 0], s[y == 1]
    out = {}
    for name in named + ([UNNAMED_ATTACK] if UNNAMED_ATTACK in fake_names else []):
        sa = fake_s[fake_names == name]
        ya, ss = np.r_[np.zeros(real_s.size, np.int64), np.ones(sa.size, np.int64)], np.r_[real_s, sa]
        curves = curve_metrics(ya, ss)
        out[name] = {"n": int(sa.size), "auc": curves["auc"], "eer": curves["eer"],
                     "recall": float(np.count_nonzero(sa >= float(threshold)) / sa.size),
                     "min_dcf": min_dcf(ya, ss, costs) if real_s.size else None}
    return out


def split_report(labels, scores, default: float, tuned: float, attacks=None, groups=None,
                 calibration: Calibration | None = None, costs: CostModel = DEFAULT_COSTS) -> dict:
    """{"default": M at `default`, "tuned": M at `tuned`, "auc", "ap", "eer"} and `field_metrics` for one split,
    plus "by_attack" at `tuned` when `attacks` (one name per sample) names the attack of any fake, and "video"
    when `groups` (one per sample) puts several samples in one group (ValueError for a group of both labels)."""
    out = {"default": metric_dict(labels, scores, default), "tuned": metric_dict(labels, scores, tuned)}
    out.update(curve_metrics(labels, scores))
    table = by_attack(labels, scores, attacks, tuned, costs) if attacks is not None else None
    if table is not None:
        out["by_attack"] = table
    out.update(field_metrics(labels, scores, calibration, costs))
    video = video_metrics(labels, scores, groups, costs) if groups is not None else None
    if video is not None:
        out["video"] = video
    return out


def val_calibration(vy: np.ndarray, vs: np.ndarray, costs: CostModel = DEFAULT_COSTS) -> Calibration:
    """The LLR calibration fitted on val; logit(score) itself when val holds a single class."""
    if _single_class(vy):
        return Calibration.identity()
    return fit_calibration(vy, vs, costs, fitted_on="val")


def usable_groups(split: str, labels, groups, warnings: list[str]):
    """`groups` where they can be videos; None, with a warning, where a group holds both labels (speakers,
    identities: groups that keep splits apart, not frames of one video)."""
    if groups is None:
        return None
    try:
        video_scores(labels, np.zeros(len(labels)), groups)
    except ValueError as e:
        warnings.append(f"{split}: no video-level metrics: {e}")
        return None
    return groups


def _single_class(y: np.ndarray) -> str | None:
    if y.min() == y.max():
        return "fake" if y[0] == 1 else "real"
    return None


def _tune_all(vy, vs, wanted: list[str], key: str) -> tuple[dict[str, float], str | None, list[str]]:
    """Every wanted threshold on val; why the requested one (`key`) is undefined, if it is; warnings for the rest."""
    only = _single_class(vy)
    if only:
        return {}, f"val split has a single class ({only} only, n={vy.size})", []
    thresholds, reason, warnings = {}, None, []
    cands = candidates(vy, vs)
    for k in wanted:
        try:
            thresholds[k] = tune_candidates(cands, *parse_method(k))
        except ThresholdUndefined as e:
            if k == key:
                reason = f"on val, {e}"
            else:
                warnings.append(f"threshold method {k} is undefined on val: {e}")
    return thresholds, reason, warnings


def build_metrics(val, test=None, method: str = "f1", extra_methods=(), attacks=None, groups=None,
                  costs: CostModel = DEFAULT_COSTS) -> tuple[dict, list[str]]:
    """The `metrics.json` document and a list of warning lines.

    `val` and `test` are (labels, scores) pairs; `test` may be None (then "test" is None). `attacks`,
    {"val": names, "test": names} with one attack name per sample, adds each split's "by_attack"
    (see `by_attack`) at the chosen threshold; `groups`, likewise, each split's "video" (a split whose groups
    mix labels gets none, with a warning). The LLR calibration is fitted on val and applied to both. Thresholds are
    tuned on val ONLY and applied unchanged to test. "thresholds" holds f1, youden, eer plus every extra
    method and the chosen one when parametrised (e.g. "precision:0.9"); a method that is undefined on val
    is left out with a warning.

    "chosen" is what was applied: {"method": "f1", "threshold": t}. When the requested method is
    undefined on val (val holds a single class, or a precision target cannot be met) the default
    threshold 0.5 is applied and "chosen" says so: {"method": "default", "threshold": 0.5,
    "requested": "precision:0.99", "fallback_reason": "..."}, with exactly one warning line about it.
    NaN scores or bad labels raise ValueError; so does an unknown method.
    """
    key = canonical_method(method)  # ValueError for an unknown method
    wanted = list(METHODS)
    for text in (*extra_methods, key):
        k = canonical_method(text)
        if k not in wanted:
            wanted.append(k)
    vy, vs = _validate(*val, split="val")
    ty = ts = None
    if test is not None:
        ty, ts = _validate(*test, split="test")
    thresholds, fallback_reason, warnings = _tune_all(vy, vs, wanted, key)
    only = _single_class(vy)
    if fallback_reason is None:
        chosen = {"method": key, "threshold": float(thresholds[key])}
    else:
        chosen = {"method": "default", "threshold": float(DEFAULT_THRESHOLD), "requested": key,
                  "fallback_reason": fallback_reason}
        warnings.insert(0, fallback_warning(chosen) + ("; AUC/AP/EER are null" if only else ""))
    if ty is not None:
        t_only = _single_class(ty)
        if t_only:
            warnings.append(f"test split has a single class ({t_only} only, n={ty.size}): AUC/AP/EER are null")

    attacks, groups = attacks or {}, groups or {}
    cal = val_calibration(vy, vs, costs)
    block = lambda split, y, s: split_report(y, s, DEFAULT_THRESHOLD, chosen["threshold"], attacks.get(split),
                                             usable_groups(split, y, groups.get(split), warnings), cal, costs)
    doc = {
        "val": block("val", vy, vs),
        "test": block("test", ty, ts) if ty is not None else None,
        "thresholds": thresholds,
        "chosen": chosen,
    }
    return doc, warnings


def fallback_warning(chosen: dict) -> str | None:
    """One line saying which threshold was applied instead of the requested one; None when none fell back."""
    if not chosen.get("fallback_reason"):
        return None
    return (f"threshold method {chosen.get('requested')} cannot be used: {chosen['fallback_reason']}; "
            f"applied the {chosen.get('method')} threshold {chosen.get('threshold')!r} instead")
