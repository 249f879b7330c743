"""predictions CSVs: scores round-trip exactly, so metrics.json is recomputable from them, ties included."""
import csv

import numpy as np
import pytest

from pipeline.metrics import build_metrics
from pipeline.predictions import read_predictions, write_predictions
from recompute import mismatches, read_csv, run_mismatches

# An EfficientNet-B0 gave every sample this score; rounded to 8 decimals it falls below itself as a threshold.
CONSTANT = float(np.float32(0.48693475127))


def write(path, y, s):
    keys = [f"k{i:04d}" for i in range(len(y))]
    write_predictions(path, keys, y, s, {k: f"{'fake' if l else 'real'}/{k}.jpg" for k, l in zip(keys, y)})


def labels(n, fakes, seed=0):
    y = np.zeros(n, np.int64)
    y[np.random.default_rng(seed).choice(n, fakes, replace=False)] = 1
    return y


def roundtrip_run(tmp_path, val, test, method):
    doc, _ = build_metrics(val, test, method)
    write(tmp_path / "predictions_val.csv", *val)
    write(tmp_path / "predictions_test.csv", *test)
    return doc


def test_scores_round_trip_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    s64 = np.concatenate([rng.random(500), [CONSTANT, 1e-300, 1 - 2 ** -53, 0.0, 1.0]])
    s32 = rng.random(500).astype(np.float32)
    for s in (s64, s32):
        y = (rng.random(s.size) < 0.3).astype(int)
        write(tmp_path / "p.csv", y, s)
        got_y, got_s = read_csv(tmp_path / "p.csv")
        assert np.array_equal(got_s, s.astype(np.float64)) and np.array_equal(got_y, y)
        ry, rs = read_predictions(tmp_path / "p.csv")
        assert rs.dtype == np.float64 and np.array_equal(rs, got_s) and np.array_equal(ry, y)
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="", encoding="utf-8")))
    assert list(rows[0]) == ["key", "source", "label", "score"] and rows[0]["source"].endswith("/k0000.jpg")


@pytest.mark.parametrize("method", ["f1", "youden", "eer", "recall:0.9"])
def test_constant_scores_recompute_exactly(tmp_path, method):
    val = (labels(40, 12, 1), np.full(40, CONSTANT))
    test = (labels(50, 10, 2), np.full(50, CONSTANT))
    doc = roundtrip_run(tmp_path, val, test, method)
    assert doc["chosen"] == {"method": method, "threshold": CONSTANT}  # the only candidate is the score itself
    _, s = read_csv(tmp_path / "predictions_val.csv")
    assert np.all(s >= doc["chosen"]["threshold"])  # every decision positive, as metrics.json says
    assert doc["test"]["tuned"]["confusion_matrix"] == [[0, 40], [0, 10]]
    assert run_mismatches(doc, tmp_path) == []


@pytest.mark.parametrize("method", ["f1", "youden", "eer", "precision:0.7", "recall:0.8"])
@pytest.mark.parametrize("seed", range(3))
def test_many_tied_scores_recompute_exactly(tmp_path, method, seed):
    rng = np.random.default_rng(seed)

    def split(n):
        y = (rng.random(n) < 0.3).astype(np.int64)
        y[:2] = [0, 1]
        # few distinct float32 values (model scores), none of them short decimals
        levels = (np.sort(rng.random(9)) / 3 + 0.3).astype(np.float32)
        idx = np.clip(rng.normal(3 + 3 * y, 1.5).round(), 0, 8).astype(int)
        return y, levels[idx].astype(np.float64)

    val, test = split(300), split(300)
    doc = roundtrip_run(tmp_path, val, test, method)
    assert doc["chosen"]["method"] == method and doc["chosen"]["threshold"] in set(val[1])
    assert run_mismatches(doc, tmp_path) == []


def test_eight_decimals_would_disagree():
    """The recomputation catches the reported bug: scores cut to 8 decimals flip every tied decision."""
    y, s = labels(40, 12, 1), np.full(40, CONSTANT)
    doc, _ = build_metrics((y, s), None, "f1")
    cut = np.array([float(f"{v:.8f}") for v in s])
    assert len(mismatches(doc["val"], y, cut, doc["chosen"]["threshold"])) >= 5
    assert mismatches(doc["val"], y, s, doc["chosen"]["threshold"]) == []
