"""Every threshold method against brute force over all distinct thresholds (random scores with ties)."""
import numpy as np
import pytest

from pipeline.thresholds import (METHODS, ThresholdUndefined, all_thresholds, canonical_method, parse_method,
                                 sweep, tune)

SEEDS = range(6)


def make(seed, n=160, decimals=2):
    """Imbalanced labels and overlapping scores rounded to create many ties."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    y[:2] = [0, 1]
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(decimals)
    return y, s


def brute(y, s):
    """Confusion counts at every distinct score, computed naively."""
    rows = []
    P, N = int(y.sum()), int((1 - y).sum())
    for t in np.unique(s):
        pred = s >= t
        tp = int(np.sum(pred & (y == 1)))
        fp = int(np.sum(pred & (y == 0)))
        rows.append(dict(t=float(t), tp=tp, fp=fp, P=P, N=N, precision=tp / (tp + fp), recall=tp / P,
                         spec=(N - fp) / N, f1=2 * tp / (2 * tp + fp + (P - tp)), fpr=fp / N, fnr=(P - tp) / P))
    return rows


def at(rows, t):
    (r,) = [r for r in rows if r["t"] == t]
    return r


@pytest.mark.parametrize("seed", SEEDS)
def test_f1_youden_eer_are_brute_force_optima(seed):
    y, s = make(seed)
    rows = brute(y, s)
    t = tune(y, s, "f1")
    assert isinstance(t, float) and t in s
    assert at(rows, t)["f1"] == pytest.approx(max(r["f1"] for r in rows), abs=1e-12)
    best_f1 = max(r["f1"] for r in rows)
    assert t == max(r["t"] for r in rows if abs(r["f1"] - best_f1) < 1e-12)  # tie rule: largest threshold

    t = tune(y, s, "youden")
    j = lambda r: r["recall"] - r["fpr"]  # noqa: E731
    assert j(at(rows, t)) == pytest.approx(max(j(r) for r in rows), abs=1e-12)

    t = tune(y, s, "eer")
    d = lambda r: abs(r["fpr"] - r["fnr"])  # noqa: E731
    assert d(at(rows, t)) == pytest.approx(min(d(r) for r in rows), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [0.5, 0.7, 0.8])
def test_precision_constrained(seed, p):
    y, s = make(seed)
    rows = brute(y, s)
    ok = [r for r in rows if r["precision"] >= p]
    if not ok:
        with pytest.raises(ThresholdUndefined, match="precision"):
            tune(y, s, f"precision:{p}")
        return
    r = at(rows, tune(y, s, f"precision:{p}"))
    assert r["precision"] >= p
    assert r["recall"] == max(o["recall"] for o in ok)
    assert r["precision"] == max(o["precision"] for o in ok if o["recall"] == r["recall"])  # tie rule


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rr", [0.5, 0.9, 1.0])
def test_recall_constrained(seed, rr):
    y, s = make(seed)
    rows = brute(y, s)
    ok = [r for r in rows if r["recall"] >= rr]
    r = at(rows, tune(y, s, f"recall:{rr}"))
    assert r["recall"] >= rr
    assert r["spec"] == max(o["spec"] for o in ok)
    assert r["recall"] == max(o["recall"] for o in ok if o["spec"] == r["spec"])  # tie rule


def test_unreachable_precision_raises():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.9, 0.1, 0.8, 0.2])  # perfectly inverted: best precision 0.5
    with pytest.raises(ThresholdUndefined, match="precision >= 0.99"):
        tune(y, s, "precision:0.99")


@pytest.mark.parametrize("seed", SEEDS)
def test_sweep_matches_brute_force(seed):
    y, s = make(seed, decimals=1)
    rows = brute(y, s)
    sw = sweep(y, s)
    assert np.array_equal(sw["threshold"], [r["t"] for r in rows])
    for key, bkey in (("precision", "precision"), ("recall", "recall"), ("f1", "f1"), ("specificity", "spec")):
        np.testing.assert_allclose(sw[key], [r[bkey] for r in rows], atol=1e-12)
    np.testing.assert_allclose(sw["youden"], [r["recall"] - r["fpr"] for r in rows], atol=1e-12)


def test_all_thresholds_and_parse():
    y, s = make(0)
    th = all_thresholds(y, s, extra=["Precision:0.50", "recall:0.9"])
    assert list(th) == ["f1", "youden", "eer", "precision:0.5", "recall:0.9"]
    assert all(type(v) is float for v in th.values())
    assert th["f1"] == tune(y, s, "f1")
    assert parse_method(" F1 ") == ("f1", None)
    assert parse_method("precision:0.9") == ("precision", 0.9)
    assert canonical_method("recall:1") == "recall:1"
    assert set(METHODS) == {"f1", "youden", "eer"}
    for bad in ("f2", "precision", "precision:x", "precision:1.5", "recall:-0.1", "f1:0.3", "precision:nan"):
        with pytest.raises(ValueError):
            parse_method(bad)


def test_undefined_cases():
    with pytest.raises(ThresholdUndefined, match="single class"):
        tune([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ThresholdUndefined, match="single class"):
        sweep([1, 1], [0.1, 0.2])
    with pytest.raises(ThresholdUndefined, match="NaN"):
        tune([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        tune([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="length"):
        tune([0, 1], [0.1])


def test_perfect_separation_and_single_score():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.7, 0.9])
    assert tune(y, s, "f1") == 0.7
    assert tune(y, s, "youden") == 0.7
    assert tune(y, s, "eer") == 0.7
    # every score equal: the only candidate is that score
    assert tune([0, 1, 0], [0.4, 0.4, 0.4], "f1") == 0.4


def test_dfp_tune_refuses_an_unreachable_target_and_keeps_the_stored_threshold(tmp_path, monkeypatch):
    from pipeline import checkpoint, evaluate
    from pipeline.errors import InputError
    from pipeline.scoring import Scored
    y = np.array([0, 1, 0, 1, 0, 1])
    s = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    monkeypatch.setattr(evaluate, "_predict_split", lambda *a, **k: (None, Scored([], y, s, {})))
    monkeypatch.setattr(evaluate, "_split_size", lambda shards, split: 0)  # no manifest here: no test split
    path = tmp_path / "best_model.pth"
    stored = {"method": "f1", "value": 0.123456789012345}
    checkpoint.save(path, {"threshold": stored})
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"cannot tune on the val split of shards: no threshold reaches "
                                         r"precision >= 0.99 \(the highest reachable is 0.5000\)"):
        evaluate.tune(path, "shards", "precision:0.99", log=lambda *a: None)
    assert path.read_bytes() == before and checkpoint.load(path)["threshold"] == stored
    evaluate.tune(path, "shards", "youden", log=lambda *a: None)
    ckpt = checkpoint.load(path)
    assert ckpt["threshold"] == {"method": "youden", "threshold": tune(y, s, "youden")}
    assert [{k: v for k, v in h.items() if k != "replaced_at"} for h in ckpt["threshold_history"]] == [
        {"method": "f1", "threshold": stored["value"]}]  # a history entry of the old form, under the one key
