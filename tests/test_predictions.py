"""predictions CSVs: scores round-trip exactly, so metrics.json is recomputable from them, ties included."""
import csv

import numpy as np
import pytest

from pipeline.metrics import build_metrics
from pipeline.formats import SampleMeta
from pipeline.predictions import attack_names, read_prediction_table, read_predictions, write_predictions
from recompute import mismatches, read_csv, run_mismatches

# An EfficientNet-B0 gave every sample this score; rounded to 8 decimals it falls below itself as a threshold.
CONSTANT = float(np.float32(0.48693475127))


def write(path, y, s):
    keys = [f"k{i:04d}" for i in range(len(y))]
    write_predictions(path, keys, y, s, {k: SampleMeta(f"{'fake' if l else 'real'}/{k}.jpg") for k, l in zip(keys, y)})


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
    assert list(rows[0]) == ["key", "source", "label", "score", "group", "attack"]
    assert rows[0]["source"].endswith("/k0000.jpg") and rows[0]["group"] == rows[0]["attack"] == ""


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


def test_group_and_attack_round_trip(tmp_path):
    keys = ["r0", "f0", "f1", "f2", "lost"]
    meta = {"r0": SampleMeta("real/id0/a.mp4", "id0", ""),
            "f0": SampleMeta("fake/Deepfakes/a_b.mp4", "a_b", "Deepfakes"),
            "f1": SampleMeta("LA_T_1.flac", "LA_0079", "A07"),
            "f2": SampleMeta('odd, "quoted"\nname.jpg', "g,1", "méthode, 2")}  # CSV quoting and non-ASCII
    y = np.array([0, 1, 1, 1, 1])
    s = np.array([0.1, CONSTANT, 1 - 2 ** -53, 0.5, 0.7])
    write_predictions(tmp_path / "p.csv", keys, y, s, meta)
    t = read_prediction_table(tmp_path / "p.csv")
    assert t.keys == keys and np.array_equal(t.labels, y) and np.array_equal(t.scores, s)
    assert t.meta == [meta["r0"], meta["f0"], meta["f1"], meta["f2"], SampleMeta()]  # a key without metadata: empty
    assert t.attacks == attack_names(keys, meta) == ["", "Deepfakes", "A07", "méthode, 2", ""]


def test_sample_meta_from_json_and_old_files(tmp_path):
    assert SampleMeta.from_json({"source": "a.wav", "class": "fake", "group": 79, "attack": None}) == \
        SampleMeta("a.wav", "79", "")
    (tmp_path / "old.csv").write_text("key,source,label,score\nk1,real/x.jpg,real,0.25\n", encoding="utf-8")
    t = read_prediction_table(tmp_path / "old.csv")
    assert t.meta == [SampleMeta("real/x.jpg")] and t.labels.tolist() == [0] and t.scores.tolist() == [0.25]
