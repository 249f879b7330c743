import json

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.calibration import Calibration
from pipeline.metrics import UNNAMED_ATTACK, build_metrics, by_attack, curve_metrics, metric_dict, split_report
from pipeline.thresholds import eer_point, tune

M_KEYS = {"threshold", "accuracy", "balanced_accuracy", "precision", "recall", "f1", "specificity", "mcc",
          "confusion_matrix"}


def make(seed, n=200, fake_share=0.25):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < fake_share).astype(int)
    y[:2] = [0, 1]
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(3)
    return y, s


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("t", [0.3, 0.5, 0.61])
def test_metric_dict_agrees_with_sklearn(seed, t):
    y, s = make(seed)
    m = metric_dict(y, s, t)
    assert set(m) == M_KEYS
    pred = (s >= t).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert m["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert tn == np.sum((y == 0) & (pred == 0)) and fp == np.sum((y == 0) & (pred == 1))
    assert fn == np.sum((y == 1) & (pred == 0)) and tp == np.sum((y == 1) & (pred == 1))
    expected = {
        "accuracy": skm.accuracy_score(y, pred), "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, zero_division=0), "recall": skm.recall_score(y, pred),
        "f1": skm.f1_score(y, pred), "mcc": skm.matthews_corrcoef(y, pred), "specificity": tn / (tn + fp),
    }
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=1e-6), k
    assert m["threshold"] == t
    json.dumps(m)  # plain Python types
    assert all(type(v) is float for k, v in m.items() if k != "confusion_matrix")
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)


def test_confusion_layout_small():
    m = metric_dict([0, 0, 0, 1, 1], [0.9, 0.1, 0.2, 0.8, 0.3], 0.5)
    assert m["confusion_matrix"] == [[2, 1], [1, 1]]  # [[tn, fp], [fn, tp]]
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["specificity"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(3))
def test_curve_metrics(seed):
    y, s = make(seed)
    c = curve_metrics(y, s)
    assert c["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert c["ap"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    t, eer = eer_point(y, s)
    assert t == tune(y, s, "eer")  # same point as the threshold module
    assert c["eer"] == eer and 0 <= eer <= 1
    m = metric_dict(y, s, t)
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    # the crossing FPR = FNR lies on a segment ending at the eer threshold's point (not their midpoint there)
    fpr, fnr = fp / (tn + fp), fn / (fn + tp)
    assert min(fpr, fnr) - 1e-12 <= eer <= max(fpr, fnr) + 1e-12


def test_build_metrics_layout_and_json():
    val, test = make(1), make(2)
    doc, warnings = build_metrics(val, test, "f1", extra_methods=["precision:0.5", "recall:0.9"])
    assert warnings == []
    assert set(doc) == {"val", "test", "thresholds", "chosen"}
    assert set(doc["thresholds"]) == {"f1", "youden", "eer", "precision:0.5", "recall:0.9"}
    assert doc["chosen"] == {"method": "f1", "threshold": tune(*val, "f1")}
    for split, (y, s) in (("val", val), ("test", test)):
        rep = doc[split]
        assert set(rep) == {"default", "tuned", "auc", "ap", "eer", "min_dcf", "act_dcf", "cllr", "dcf", "llr", "ece",
                            "ece_bins"}
        assert set(rep["default"]) == M_KEYS
        assert rep["default"]["threshold"] == 0.5
        assert rep["tuned"]["threshold"] == doc["chosen"]["threshold"]
        assert rep["llr"]["fitted_on"] == "val"
        assert rep == split_report(y, s, 0.5, doc["chosen"]["threshold"], calibration=Calibration.from_dict(rep["llr"]))
    assert doc["val"]["tuned"]["f1"] >= doc["val"]["default"]["f1"]
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc


def test_parametrised_chosen_method_is_recorded():
    doc, _ = build_metrics(make(3), None, "Recall:0.90")
    assert doc["chosen"]["method"] == "recall:0.9"
    assert doc["thresholds"]["recall:0.9"] == doc["chosen"]["threshold"]
    assert doc["test"] is None


def test_tuned_on_val_only():
    val = make(4)
    y_test, s_test = make(5)
    a, _ = build_metrics(val, (y_test, s_test))
    b, _ = build_metrics(val, (y_test, np.random.default_rng(9).random(y_test.size)))
    c, _ = build_metrics(val, (y_test, 1 - s_test))
    assert a["chosen"] == b["chosen"] == c["chosen"]
    assert a["thresholds"] == b["thresholds"] == c["thresholds"]
    assert a["val"] == b["val"]
    assert a["test"] != b["test"]


def test_single_class_val_falls_back_to_default():
    val = (np.zeros(20, int), np.linspace(0, 1, 20))
    doc, warnings = build_metrics(val, make(6))
    assert doc["chosen"]["threshold"] == 0.5
    assert doc["thresholds"] == {}
    assert doc["val"]["auc"] is None and doc["val"]["ap"] is None and doc["val"]["eer"] is None
    assert doc["val"]["tuned"] == doc["val"]["default"]
    assert doc["test"]["auc"] == pytest.approx(skm.roc_auc_score(*make(6)))
    assert any("single class" in w and "0.5" in w for w in warnings)
    json.dumps(doc, allow_nan=False)


def test_unreachable_chosen_precision_records_the_fallback():
    y = np.array([0, 1, 0, 1, 0, 1])
    s = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    doc, warnings = build_metrics((y, s), make(8), "precision:0.99")
    assert doc["chosen"] == {"method": "default", "threshold": 0.5, "requested": "precision:0.99",
                             "fallback_reason": "on val, no threshold reaches precision >= 0.99 "
                                                "(the highest reachable is 0.5000)"}
    assert "precision:0.99" not in doc["thresholds"] and "f1" in doc["thresholds"]
    assert doc["val"]["tuned"] == doc["val"]["default"] and doc["test"]["tuned"]["threshold"] == 0.5
    assert len(warnings) == 1  # said once, not once per place it was noticed
    assert "precision:0.99" in warnings[0] and "default threshold 0.5" in warnings[0]


def test_single_class_val_records_the_fallback():
    doc, warnings = build_metrics((np.ones(7, int), np.linspace(0, 1, 7)), None, "youden")
    assert doc["chosen"] == {"method": "default", "threshold": 0.5, "requested": "youden",
                             "fallback_reason": "val split has a single class (fake only, n=7)"}
    assert len(warnings) == 1 and "youden" in warnings[0] and "AUC/AP/EER are null" in warnings[0]


def test_met_precision_target_has_no_fallback_keys():
    y = np.array([0, 1, 0, 1, 0, 1])
    s = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3])
    doc, warnings = build_metrics((y, s), None, "precision:0.99", extra_methods=["precision:1.0"])
    assert doc["chosen"] == {"method": "precision:0.99", "threshold": 0.8}
    assert warnings == []


def test_an_undefined_extra_method_is_no_fallback():
    y = np.array([0, 1, 0, 1, 0, 1])
    s = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    doc, warnings = build_metrics((y, s), None, "f1", extra_methods=["precision:0.99"])
    assert doc["chosen"] == {"method": "f1", "threshold": doc["thresholds"]["f1"]}
    assert len(warnings) == 1 and "precision:0.99 is undefined on val" in warnings[0]


def test_bad_inputs_raise():
    y, s = make(7)
    bad = s.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_metrics((y, bad), None)
    with pytest.raises(ValueError, match="test: .*NaN"):
        build_metrics((y, s), (y, bad))
    with pytest.raises(ValueError, match="NaN"):
        metric_dict(y, bad, 0.5)
    with pytest.raises(ValueError, match="unknown threshold method"):
        build_metrics((y, s), None, "accuracy")


def attack_split():
    """Reals, a separable attack, a one-fake attack, an attack tied with every real, and unnamed fakes."""
    reals = [0.1, 0.2, 0.4, 0.4, 0.6, 0.3]
    fakes = {"Deepfakes": [0.7, 0.9, 0.35, 0.8], "A07": [0.65], "Tied": [0.4, 0.4, 0.4], "": [0.2, 0.95]}
    y = [0] * len(reals)
    s = list(reals)
    names = ["bona-fide-ignored"] + [""] * (len(reals) - 1)  # a real's name never makes an attack
    for name, scores in fakes.items():
        y += [1] * len(scores)
        s += scores
        names += [name] * len(scores)
    return np.array(y), np.array(s), names, np.array(reals), fakes


@pytest.mark.parametrize("t", [0.4, 0.62, 0.9])
def test_by_attack_agrees_with_sklearn(t):
    from recompute import sk_eer
    y, s, names, reals, fakes = attack_split()
    table = by_attack(y, s, names, t)
    assert list(table) == ["A07", "Deepfakes", "Tied", UNNAMED_ATTACK]  # named sorted, unnamed last
    for name, got in table.items():
        fs = np.array(fakes["" if name == UNNAMED_ATTACK else name])
        yy, ss = np.r_[np.zeros(reals.size), np.ones(fs.size)], np.r_[reals, fs]
        assert got["n"] == fs.size
        assert got["auc"] == pytest.approx(skm.roc_auc_score(yy, ss), abs=1e-12), name
        assert got["eer"] == pytest.approx(sk_eer(yy, ss), abs=1e-12), name
        assert got["recall"] == pytest.approx(skm.recall_score(np.ones(fs.size), (fs >= t).astype(int)), abs=1e-12)
    assert table["A07"]["n"] == 1 and table["A07"]["auc"] == 1.0 and table["A07"]["eer"] == 0.0
    assert table["Tied"]["recall"] == (1.0 if t <= 0.4 else 0.0)  # ties are decided fake at score >= threshold


def test_by_attack_in_the_split_report_and_json():
    y, s, names, _, _ = attack_split()
    doc, _ = build_metrics((y, s), (y, s[::-1].copy()), "f1", attacks={"val": names, "test": names})
    t = doc["chosen"]["threshold"]
    assert doc["val"]["by_attack"] == by_attack(y, s, names, t)
    assert doc["test"]["by_attack"] == by_attack(y, s[::-1], names, t)  # test at val's threshold
    assert doc["test"]["by_attack"] != doc["val"]["by_attack"]
    assert {k: v for k, v in doc["val"].items() if k != "by_attack"} == split_report(
        y, s, 0.5, t, calibration=Calibration.from_dict(doc["val"]["llr"]))
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc


def test_no_named_attack_leaves_the_document_as_it_was():
    y, s = make(1)
    plain, _ = build_metrics((y, s), (y, s))
    unnamed, _ = build_metrics((y, s), (y, s), attacks={"val": [""] * y.size, "test": [None] * y.size})
    reals_only = [("X" if label == 0 else "") for label in y]
    named_reals, _ = build_metrics((y, s), None, attacks={"val": reals_only})
    assert plain == unnamed and "by_attack" not in plain["val"] and "by_attack" not in named_reals["val"]
    assert by_attack(y, s, [""] * y.size, 0.5) is None


def test_by_attack_without_reals_and_bad_lengths():
    table = by_attack([1, 1, 1], [0.2, 0.6, 0.9], ["A", "A", "B"], 0.5)
    assert table == {"A": {"n": 2, "auc": None, "eer": None, "recall": 0.5, "min_dcf": None},
                     "B": {"n": 1, "auc": None, "eer": None, "recall": 1.0, "min_dcf": None}}
    with pytest.raises(ValueError, match="2 attack names for 3 samples"):
        by_attack([0, 1, 1], [0.2, 0.6, 0.9], ["A", "A"], 0.5)
