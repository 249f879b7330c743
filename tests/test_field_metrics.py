"""The field's figures against the reference packages' formulas, written out here on their own.

ASVspoof 5 evaluation package (`calculate_modules.py`): compute_det_curve / compute_eer (nearest point of a
per-sample DET curve), compute_mindcf, compute_actDCF, calculate_CLLR; bona fide is the target class and a
higher score is more bona fide. DeepfakeBench: video AUC on the mean frame score per video. The reference
EER and minDCF over *achievable* thresholds are brute force over every distinct score and "above them all".
"""
import csv
import json
import math
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline import cli
from pipeline.calibration import ECE_BINS, Calibration, fit, logit
from pipeline.dcf import CostModel, act_dcf, cllr, min_dcf, parse_costs
from pipeline.metrics import build_metrics, by_attack, split_report, video_metrics
from pipeline.formats import SampleMeta
from pipeline.predictions import attack_names, group_names, write_predictions
from pipeline.thresholds import eer_point, tune

P_SPOOF, C_MISS, C_FA = 0.05, 1.0, 10.0


# ---- ASVspoof 5's formulas (bona fide = target, scores: higher = more bona fide) ----

def asv_det_curve(target, nontarget):
    n = target.size + nontarget.size
    scores = np.concatenate((target, nontarget))
    labels = np.concatenate((np.ones(target.size), np.zeros(nontarget.size)))
    order = np.argsort(scores, kind="mergesort")
    tar_sums = np.cumsum(labels[order])
    non_sums = nontarget.size - (np.arange(1, n + 1) - tar_sums)
    frr = np.concatenate(([0.0], tar_sums / target.size))
    far = np.concatenate(([1.0], non_sums / nontarget.size))
    return frr, far


def asv_eer(target, nontarget):
    frr, far = asv_det_curve(target, nontarget)
    i = np.argmin(np.abs(frr - far))
    return (frr[i] + far[i]) / 2


def asv_mindcf(target, nontarget):
    frr, far = asv_det_curve(target, nontarget)
    p_target = 1 - P_SPOOF
    c_det = min(C_MISS * frr[i] * p_target + C_FA * far[i] * (1 - p_target) for i in range(frr.size))
    return c_det / min(C_MISS * p_target, C_FA * (1 - p_target))


def asv_actdcf(bona, spoof):
    threshold = -np.log(C_MISS * (1 - P_SPOOF) / (C_FA * P_SPOOF))
    miss, fa = np.sum(bona < threshold) / bona.size, np.sum(spoof >= threshold) / spoof.size
    return (C_MISS * (1 - P_SPOOF) * miss + C_FA * P_SPOOF * fa) / min(C_FA * P_SPOOF, C_MISS * (1 - P_SPOOF))


def asv_cllr(bona, spoof):
    nls = lambda v: np.log1p(np.exp(-v))
    return 0.5 * (np.mean(nls(bona)) + np.mean(nls(-spoof))) / np.log(2)


def asv(y, s):
    """dfp's labels and scores as ASVspoof's (bona fide, spoof) scores: higher = more bona fide."""
    return -s[y == 0], -s[y == 1]


def clipped_logit(s):
    p = np.clip(s, 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


# ---- brute force over achievable thresholds (a sample is fake when score >= t) ----

def achievable(y, s):
    pts = []
    for t in [*np.unique(s), math.inf]:
        fake = s >= t
        pts.append((np.mean(fake[y == 0]), np.mean(~fake[y == 1])))  # (FPR, FNR)
    return pts


def brute_eer(y, s):
    pts = achievable(y, s)
    for (f0, n0), (f1, n1) in zip(pts, pts[1:]):
        if f0 - n0 >= 0 >= f1 - n1:
            w = 0.0 if f0 - n0 == f1 - n1 else (f0 - n0) / ((f0 - n0) - (f1 - n1))
            return f0 + w * (f1 - f0)
    raise AssertionError("no crossing")


def brute_mindcf(y, s):
    norm = min(C_MISS * (1 - P_SPOOF), C_FA * P_SPOOF)
    return min((C_MISS * (1 - P_SPOOF) * fpr + C_FA * P_SPOOF * fnr) / norm for fpr, fnr in achievable(y, s))


def ref_ece(y, p, bins=ECE_BINS):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (p >= lo) & ((p < hi) if b < bins - 1 else (p <= hi))
        if inside.any():
            total += inside.sum() / y.size * abs(y[inside].mean() - p[inside].mean())
    return total


def deepfakebench_video(frames):
    """[(video, label, score)] -> (labels, mean scores) per video, as DeepfakeBench's get_video_metrics."""
    videos = {}
    for name, label, score in frames:
        videos.setdefault(name, []).append((label, score))
    labels = [int(sum(l for l, _ in v) / len(v)) for v in videos.values()]
    return np.array(labels), np.array([sum(s for _, s in v) / len(v) for v in videos.values()])


def sample(seed, n=300, fake_share=0.3, shift=1.5):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < fake_share).astype(np.int64)
    y[:2] = [0, 1]
    return y, 1 / (1 + np.exp(-rng.normal(np.where(y == 1, shift, -shift), 1.0)))


# ---- EER ----

def test_eer_of_the_issue_example_is_one_sixth():
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.99, 0.99, 0.99, 0.99])
    assert eer_point(y, s)[1] == pytest.approx(1 / 6, abs=1e-12)
    assert brute_eer(y, s) == pytest.approx(1 / 6, abs=1e-12)
    assert tune(y, s, "eer") == 0.99  # the threshold method still picks the nearest achievable point


@pytest.mark.parametrize("seed", range(4))
def test_tie_free_scores_match_asvspoof5(seed):
    y, s = sample(seed)
    assert np.unique(s).size == s.size
    bona, spoof = asv(y, s)
    rep = split_report(y, s, 0.5, 0.5)
    half_step = 0.5 / min(bona.size, spoof.size)
    assert abs(rep["eer"] - asv_eer(bona, spoof)) <= half_step + 1e-12
    assert rep["eer"] == pytest.approx(brute_eer(y, s), abs=1e-12)
    assert rep["min_dcf"] == pytest.approx(asv_mindcf(bona, spoof), abs=1e-12)
    llr_bona, llr_spoof = asv(y, clipped_logit(s))  # no val: the LLR is logit(score) itself
    assert rep["act_dcf"] == pytest.approx(asv_actdcf(llr_bona, llr_spoof), abs=1e-12)
    assert rep["cllr"] == pytest.approx(asv_cllr(llr_bona, llr_spoof), abs=1e-12)
    assert rep["llr"]["fitted_on"] is None and rep["dcf"] == {"p_spoof": 0.05, "c_miss": 1.0, "c_fa": 10.0}
    assert rep["ece"] == pytest.approx(ref_ece(y, s), abs=1e-12) and rep["ece_bins"] == ECE_BINS


@pytest.mark.parametrize("decimals", [1, 2])
def test_heavily_tied_scores_stay_achievable(decimals):
    y, s = sample(7, n=400)
    s = s.round(decimals)
    rep = split_report(y, s, 0.5, 0.5)
    assert rep["eer"] == pytest.approx(brute_eer(y, s), abs=1e-12)
    assert rep["min_dcf"] == pytest.approx(brute_mindcf(y, s), abs=1e-12)
    # the per-sample DET curve splits ties, which no threshold can: never below our achievable figures
    assert rep["min_dcf"] >= asv_mindcf(*asv(y, s)) - 1e-12


def test_tie_block_at_the_top_and_saturated_scores_are_finite():
    y = np.array([0] * 6 + [1] * 6)
    s = np.array([0.0, 0.0, 0.2, 1.0, 1.0, 1.0, 0.0, 0.7, 1.0, 1.0, 1.0, 1.0])
    doc, _ = build_metrics((y, s), (y, s[::-1].copy()))
    json.dumps(doc, allow_nan=False)
    for rep in (doc["val"], doc["test"]):
        assert all(math.isfinite(rep[k]) for k in ("eer", "min_dcf", "act_dcf", "cllr", "ece"))
    rep = split_report(y, s, 0.5, 0.5)
    assert rep["eer"] == pytest.approx(brute_eer(y, s), abs=1e-12)
    assert rep["min_dcf"] == pytest.approx(brute_mindcf(y, s), abs=1e-12)
    llr_bona, llr_spoof = asv(y, clipped_logit(s))
    assert rep["cllr"] == pytest.approx(asv_cllr(llr_bona, llr_spoof), abs=1e-9)
    assert math.isfinite(cllr(y, -logit(np.array([1.0] * 6 + [0.0] * 6))))  # every one confidently wrong


def test_constant_scores():
    y = np.array([0, 0, 0, 1, 1])
    s = np.full(5, 0.5)
    rep = split_report(y, s, 0.5, 0.5)
    assert rep["eer"] == 0.5 and rep["auc"] == 0.5
    assert rep["min_dcf"] == pytest.approx(1.0)  # no better than the better trivial rule
    assert rep["cllr"] == pytest.approx(1.0)  # LLR 0 everywhere: one bit
    assert rep["act_dcf"] == pytest.approx(asv_actdcf(*asv(y, np.zeros(5))))
    assert math.isfinite(fit(y, s).scale)


# ---- calibration ----

def test_overconfident_scores_calibrated_on_val_lower_cllr_and_ece():
    rng = np.random.default_rng(3)
    def split(n):
        y = (rng.random(n) < 0.4).astype(np.int64)
        v = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)  # true fake LLR: 2v
        return y, 1 / (1 + np.exp(-12 * v))  # six times too confident
    val, test = split(2000), split(2000)
    doc, _ = build_metrics(val, test)
    got, raw = doc["test"], split_report(*test, 0.5, doc["chosen"]["threshold"])
    assert got["llr"]["fitted_on"] == "val" and got["llr"]["scale"] == pytest.approx(2 / 12, rel=0.15)
    assert got["cllr"] < raw["cllr"] and got["ece"] < raw["ece"]
    assert got["min_dcf"] == raw["min_dcf"] and got["eer"] == raw["eer"]  # monotone maps change neither
    cal = Calibration.from_dict(got["llr"])
    llr_bona, llr_spoof = asv(test[0], cal.fake_llr(test[1]))
    assert got["cllr"] == pytest.approx(asv_cllr(llr_bona, llr_spoof), abs=1e-12)
    assert got["act_dcf"] == pytest.approx(asv_actdcf(llr_bona, llr_spoof), abs=1e-12)
    assert got["ece"] == pytest.approx(ref_ece(test[0], cal.probability(test[1])), abs=1e-12)


def test_calibration_fit_is_the_prior_weighted_optimum():
    y, s = sample(5, n=500)
    c = fit(y, s)
    pi = 1 / (1 + CostModel().beta)
    x = clipped_logit(s)
    def loss(a, b):
        z = a * x + b + np.log(pi / (1 - pi))
        return pi * np.mean(np.logaddexp(0, -z[y == 1])) + (1 - pi) * np.mean(np.logaddexp(0, z[y == 0]))
    best = loss(c.scale, c.offset)
    for da, db in ((1e-2, 0), (-1e-2, 0), (0, 1e-2), (0, -1e-2)):
        assert best <= loss(c.scale + da, c.offset + db) + 1e-9
    assert c.prior == pytest.approx(y.mean())


# ---- videos, attacks ----

def test_video_level_is_deepfakebench_mean_frame_score():
    rng = np.random.default_rng(11)
    frames = []
    for v in range(40):
        label = int(v % 3 == 0)
        for _ in range(rng.integers(1, 6)):
            frames.append((f"vid{v}", label, float(np.clip(rng.normal(0.4 + 0.25 * label, 0.2), 0, 1))))
    groups = [f[0] for f in frames]
    y, s = np.array([f[1] for f in frames]), np.array([f[2] for f in frames])
    vy, vs = deepfakebench_video(frames)
    got = split_report(y, s, 0.5, 0.5, groups=groups)["video"]
    assert got["n"] == 40
    assert got["auc"] == pytest.approx(skm.roc_auc_score(vy, vs), abs=1e-12)
    assert got["ap"] == pytest.approx(skm.average_precision_score(vy, vs), abs=1e-12)
    assert got["eer"] == pytest.approx(brute_eer(vy, vs), abs=1e-12)
    assert got["min_dcf"] == pytest.approx(brute_mindcf(vy, vs), abs=1e-12)
    assert "video" not in split_report(y, s, 0.5, 0.5, groups=[f"f{i}" for i in range(y.size)])  # one frame each


def test_a_group_with_both_labels_is_not_a_video():
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    with pytest.raises(ValueError, match="group 'spk1' holds both real and fake"):
        video_metrics(y, s, ["spk1", "spk2", "spk1", "spk3"])
    doc, warnings = build_metrics((y, s), (y, s), groups={"val": ["spk1", "spk2", "spk1", "spk3"],
                                                         "test": ["a", "a", "b", "b"]})
    assert "video" not in doc["val"] and any("val: no video-level metrics" in w and "spk1" in w for w in warnings)
    assert doc["test"]["video"]["n"] == 2


def test_min_dcf_per_attack():
    y, s = sample(2, n=200)
    names = ["" if label == 0 else ("A" if i % 2 else "B") for i, label in enumerate(y)]
    table = by_attack(y, s, names, 0.5)
    for name in ("A", "B"):
        keep = (y == 0) | (np.array(names) == name)
        assert table[name]["min_dcf"] == pytest.approx(asv_mindcf(*asv(y[keep], s[keep])), abs=1e-12)


def test_parse_costs():
    assert parse_costs("0.05, 1, 10") == CostModel(0.05, 1.0, 10.0)
    for bad in ("0.05,1", "a,b,c", "0,1,10", "0.5,-1,1", "0.5,1,inf"):
        with pytest.raises(ValueError):
            parse_costs(bad)
    y, s = sample(1)
    other = CostModel(0.5, 1.0, 1.0)
    assert min_dcf(y, s, other) == pytest.approx(2 * min(0.5 * fpr + 0.5 * fnr for fpr, fnr in achievable(y, s)))
    assert act_dcf(y, -logit(s), other) == pytest.approx(np.mean(s[y == 0] >= 0.5) + np.mean(s[y == 1] < 0.5))


# ---- dfp metrics ----

def _run_cli(argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dfp", "metrics", *map(str, argv)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _fake_run(run, seed=0):
    """predictions_{val,test}.csv and metrics.json as `train.finish_run` writes them (same calls)."""
    run.mkdir()
    preds, rng = {}, np.random.default_rng(seed)
    for split, n_videos in (("val", 40), ("test", 60)):
        y = np.repeat((rng.random(n_videos) < 0.4).astype(np.int64), 3)  # three frames per video
        y[:6] = [0, 0, 0, 1, 1, 1]
        s = (1 / (1 + np.exp(-rng.normal(np.where(y == 1, 1.0, -1.0), 1.5)))).astype(np.float32).astype(np.float64)
        s[:3] = [1.0, 0.0, 1.0]  # saturated, as float32 sigmoids give
        keys = [f"{split}/{i:04d}" for i in range(y.size)]
        meta = {k: SampleMeta(k, f"video{i // 3}", f"m{i % 2}" if y[i] else "") for i, k in enumerate(keys)}
        preds[split] = (keys, y, s, meta)
        write_predictions(run / f"predictions_{split}.csv", keys, y, s, meta)
    doc, _ = build_metrics((preds["val"][1], preds["val"][2]), (preds["test"][1], preds["test"][2]), "f1",
                           attacks={k: attack_names(p[0], p[3]) for k, p in preds.items()},
                           groups={k: group_names(p[0], p[3]) for k, p in preds.items()})
    (run / "metrics.json").write_text(json.dumps(doc, allow_nan=False))
    return doc


def test_dfp_metrics_reproduces_the_runs_test_block_and_exports_asvspoof5(tmp_path, monkeypatch, capsys):
    doc = _fake_run(tmp_path / "run")
    out_json, export = tmp_path / "block.json", tmp_path / "cm.tsv"
    code, out, err = _run_cli([tmp_path / "run/predictions_test.csv", "--val", tmp_path / "run/predictions_val.csv",
                               "--json", out_json, "--export-asvspoof5", export], monkeypatch, capsys)
    assert code == 0, err
    block = json.loads(out_json.read_text())
    assert block == json.loads(json.dumps(doc["test"]))
    assert "video" in block and "min_dcf" in block["by_attack"]["m0"]
    assert "minDCF" in out and "Video level" in out and "Per attack" in out
    # the export: the official package's reading of it gives our numbers
    with open(export, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    with open(tmp_path / "cm_keys.tsv", newline="") as f:
        keys = dict(list(csv.reader(f, delimiter="\t"))[1:])
    assert rows[0] == ["filename", "cm-score"]
    llr = np.array([float(r[1]) for r in rows[1:]])
    label = np.array([keys[r[0]] for r in rows[1:]])
    bona, spoof = llr[label == "bonafide"], llr[label == "spoof"]
    assert block["cllr"] == pytest.approx(asv_cllr(bona, spoof), abs=1e-12)
    assert block["act_dcf"] == pytest.approx(asv_actdcf(bona, spoof), abs=1e-12)
    assert np.mean(bona) > np.mean(spoof)  # higher = more bona fide
    assert [r[0] for r in rows[1:]] == [f"test/{i:04d}" for i in range(len(rows) - 1)]


BAD_FILES = [
    ("key,score\na,0.1\n", "line 1: no 'label' column"),
    ("label,value\n0,0.1\n", "line 1: no 'score' column"),
    ("label,score\n0,0.1\n1,high\n", "line 3: score 'high' is not a number"),
    ("label,score\n0,0.1\n1,nan\n", "line 3: score 'nan' is not a probability"),
    ("label,score\nreal,0.1\nreal,0.4\n", "lines 2-3: every row is real"),
    ("label,score,group\n0,0.1,v1\n1,0.9,v2\n1,0.8,v1\n", "line 4: group 'v1' holds both real and fake"),
    ("label,score\n2,0.1\n1,0.3\n", "line 2: label '2'"),
]


@pytest.mark.parametrize("text,needle", BAD_FILES, ids=[b[1] for b in BAD_FILES])
@pytest.mark.parametrize("as_val", [False, True])
def test_bad_score_files_exit_2_naming_file_and_line(text, needle, as_val, tmp_path, monkeypatch, capsys):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("label,score\n0,0.2\n1,0.7\n0,0.4\n")
    bad.write_text(text)
    argv = [good, "--val", bad] if as_val else [bad]
    code, _, err = _run_cli([*argv, "--json", tmp_path / "o.json", "--out", tmp_path / "o"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and f"{bad} {needle}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "good.csv"]


def test_bad_dcf_exits_2(tmp_path, monkeypatch, capsys):
    good = tmp_path / "good.csv"
    good.write_text("label,score\n0,0.2\n1,0.7\n")
    code, _, err = _run_cli([good, "--dcf", "0.05,1", "--json", tmp_path / "o.json"], monkeypatch, capsys)
    assert code == 2 and "--dcf" in err and not (tmp_path / "o.json").exists()


@pytest.mark.slow
def test_dfp_metrics_reproduces_a_training_runs_test_block(tiny_image_run, tmp_path, monkeypatch, capsys):
    out = tiny_image_run  # only read: dfp metrics writes to --json
    code, _, err = _run_cli([out / "predictions_test.csv", "--val", out / "predictions_val.csv",
                             "--json", tmp_path / "block.json"], monkeypatch, capsys)
    assert code == 0, err
    test_block = json.loads((out / "metrics.json").read_text())["test"]
    assert json.loads((tmp_path / "block.json").read_text()) == test_block
    assert test_block["llr"]["fitted_on"] == "val" and "min_dcf" in test_block
    assert (out / "calibration.png").is_file() and "minDCF" in (out / "training_results.txt").read_text()


def test_summary_console_and_html_show_the_field_block(tmp_path):
    from pipeline.report import console_summary, render_html, summary_text
    doc = _fake_run(tmp_path / "run")
    text, page = summary_text(doc, {}), render_html("run", doc, {}, {}, "")
    console = console_summary("test", doc["test"], doc["chosen"])
    for split in ("val", "test"):
        rep = doc[split]
        line = f"minDCF {rep['min_dcf']:.4f}  actDCF {rep['act_dcf']:.4f}  Cllr {rep['cllr']:.4f} bits"
        assert line in text and "LLR calibrated on val" in text
        assert f"Video level ({rep['video']['n']} videos, mean frame score): AUC {rep['video']['auc']:.4f}" in text
    assert f"minDCF {doc['test']['min_dcf']:.4f}" in console and "Video level" in console
    assert page.count("Cllr (bits)") == 2 and page.count("Videos (mean frame score)") == 2


@pytest.mark.slow
def test_dfp_metrics_out_is_a_run_directory_with_the_field_block(tmp_path, monkeypatch, capsys):
    _fake_run(tmp_path / "run")
    out = tmp_path / "o"
    code, _, err = _run_cli([tmp_path / "run/predictions_test.csv", "--val", tmp_path / "run/predictions_val.csv",
                             "--out", out], monkeypatch, capsys)
    assert code == 0, err
    doc = json.loads((out / "metrics.json").read_text())
    text = (out / "training_results.txt").read_text()
    for split in ("val", "test"):
        rep = doc[split]
        assert f"minDCF {rep['min_dcf']:.4f}  actDCF {rep['act_dcf']:.4f}  Cllr {rep['cllr']:.4f} bits" in text
        assert f"Video level ({rep['video']['n']} videos, mean frame score): AUC {rep['video']['auc']:.4f}" in text
    page = (out / "report.html").read_text()
    assert "Cllr (bits)" in page and "Videos (mean frame score)" in page and "calibration.png" in page
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
