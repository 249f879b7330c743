import base64
import csv
import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.metrics import build_metrics
from pipeline.report import PLOTS, render_report, summary_text, write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scores(rng, y):
    return np.clip(rng.normal(0.3 + 0.4 * y, 0.18), 0, 1).round(4)


def write_predictions(path, y, s, split):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "source", "label", "score"])
        for i, (label, score) in enumerate(zip(y, s)):
            w.writerow([f"{split}{i:05d}", f"{'fake' if label else 'real'}/img, {i}.jpg", int(label), float(score)])


def make_run(tmp_path, with_test=True):
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    run.mkdir()
    splits = {"train": {"real": 600, "fake": 150}, "val": {"real": 120, "fake": 30}, "test": {"real": 130, "fake": 35}}
    config = {"dataset": {"modality": "image", "splits": splits}, "model": "efficientnet_b0",
              "strategy": {"sampler": "weighted", "minority_augment": True}, "loss": {"name": "focal", "gamma": 2.0},
              "epochs": 4}
    (run / "config.json").write_text(json.dumps(config))
    with open(run / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "val_loss", "val_f1", "val_auc", "lr", "samples_per_s"])
        for e in range(1, 5):
            w.writerow([e, 0.6 / e, 0.65 / e + 0.05, 0.5 + 0.08 * e, 0.7 + 0.05 * e, 1e-4, 800 + e])
    preds = {}
    for split in ("val", "test") if with_test else ("val",):
        y = np.array([0] * splits[split]["real"] + [1] * splits[split]["fake"])
        s = scores(rng, y)
        preds[split] = (y, s)
        write_predictions(run / f"predictions_{split}.csv", y, s, split)
    doc, _ = build_metrics(preds["val"], preds.get("test"), "f1", extra_methods=["precision:0.6"])
    write_json(run / "metrics.json", doc)
    return run, doc, config


def check_png(data: bytes):
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000
    im = Image.open(io.BytesIO(data))
    im.verify()
    w, h = Image.open(io.BytesIO(data)).size
    assert 400 <= w <= 3000 and 300 <= h <= 3000


def test_render_full_run(tmp_path):
    run, doc, config = make_run(tmp_path)
    written = render_report(run)
    names = {p.name for p in written}
    assert names == set(PLOTS) | {"training_results.txt", "report.html"}
    for name in PLOTS:
        check_png((run / name).read_bytes())
    page = (run / "report.html").read_text(encoding="utf-8")
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == len(PLOTS)
    assert {base64.b64decode(u) for u in uris} == {(run / n).read_bytes() for n in PLOTS}
    assert 'src="http' not in page and "href=" not in page and "<script" not in page
    assert "img, 1.jpg" not in page  # sources are not dumped into the page
    text = (run / "training_results.txt").read_text(encoding="utf-8")
    t = doc["chosen"]["threshold"]
    assert f"{t:.4f}" in text and f"{t:.6f}" in text and f"{t:.6f}" in page
    assert "Imbalance Ratio" in text and "4.00:1 (real majority)" in text
    assert "Results (threshold=0.5)" in text and "Improvement" in text
    assert "VAL RESULTS" in text and "TEST RESULTS" in text
    assert text == summary_text(doc, config)
    assert not list(run.glob("*.partial"))  # no temporary files left behind


def test_missing_history_and_test(tmp_path):
    run, doc, _ = make_run(tmp_path, with_test=False)
    (run / "history.csv").unlink()
    written = {p.name for p in render_report(run)}
    assert "training_curves.png" not in written
    assert set(PLOTS) - {"training_curves.png"} <= written
    assert "report.html" in written and "training_results.txt" in written
    assert doc["test"] is None
    assert "TEST RESULTS" not in (run / "training_results.txt").read_text()


def test_missing_metrics_recomputed_from_predictions(tmp_path):
    run, doc, _ = make_run(tmp_path)
    (run / "metrics.json").unlink()
    (run / "config.json").unlink()
    written = {p.name for p in render_report(run)}
    assert not (run / "metrics.json").exists()
    assert "confusion_matrix_optimal.png" in written and "dataset_stats.png" in written
    assert f"{doc['chosen']['threshold']:.6f}" in (run / "training_results.txt").read_text()


def test_nearly_empty_run_does_not_crash(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,train_loss\n")  # header only
    (tmp_path / "metrics.json").write_text("{not json")
    written = {p.name for p in render_report(tmp_path)}
    assert written == {"training_results.txt", "report.html"}
    assert "missing" in (tmp_path / "report.html").read_text()


def test_single_class_val_report(tmp_path):
    rng = np.random.default_rng(1)
    yv = np.zeros(50, int)
    yt = np.array([0] * 40 + [1] * 10)
    doc, warnings = build_metrics((yv, scores(rng, yv)), (yt, scores(rng, yt)))
    write_json(tmp_path / "metrics.json", doc)
    write_predictions(tmp_path / "predictions_val.csv", yv, scores(rng, yv), "val")
    write_predictions(tmp_path / "predictions_test.csv", yt, scores(rng, yt), "test")
    written = {p.name for p in render_report(tmp_path)}
    assert "threshold_analysis.png" not in written  # undefined on a single-class val
    assert {"roc_curve.png", "confusion_matrix_default.png"} <= written
    text = (tmp_path / "training_results.txt").read_text()
    assert "single class" in text and "n/a" in text


def test_summary_text_tolerates_empty_inputs():
    text = summary_text({}, {})
    assert "TRAINING RESULTS" in text and "no dataset statistics" in text


def test_render_report_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        render_report(tmp_path / "nope")


def test_threshold_fallback_is_shown(tmp_path):
    run, _, config = make_run(tmp_path)
    yv, sv = np.array([0, 1, 0, 1, 0, 1] * 5), np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3] * 5)
    doc, _ = build_metrics((yv, sv), None, "precision:0.99")
    write_json(run / "metrics.json", doc)
    write_predictions(run / "predictions_val.csv", yv, sv, "val")
    (run / "predictions_test.csv").unlink()
    render_report(run)
    reason = doc["chosen"]["fallback_reason"]
    text = (run / "training_results.txt").read_text()
    assert "Chosen: method default, threshold 0.500000" in text
    assert f"Requested: method precision:0.99, not applied: {reason}" in text
    warnings = text[text.index("WARNINGS"):]
    assert "precision:0.99 cannot be used" in warnings and "is undefined on val" not in warnings
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.count("precision:0.99") >= 2 and html.escape(reason) in page  # warning box and threshold section


def test_normal_choice_shows_no_fallback(tmp_path):
    run, doc, _ = make_run(tmp_path)
    render_report(run)
    assert "fallback_reason" not in doc["chosen"]
    text = (run / "training_results.txt").read_text()
    assert "Requested:" not in text and "cannot be used" not in text
    assert "Requested:" not in (run / "report.html").read_text(encoding="utf-8")


def attack_run(tmp_path):
    """A run whose val and test fakes name their attack (one of them a single fake, some unnamed)."""
    from pipeline.formats import SampleMeta
    from pipeline.predictions import write_predictions as write_csv
    rng = np.random.default_rng(3)
    run = tmp_path / "run"
    run.mkdir()
    names = np.array(["NeuralTextures"] * 12 + ["A07"] + [""] * 5)
    preds, attacks = {}, {}
    for split in ("val", "test"):
        y = np.array([0] * 40 + [1] * names.size)
        s = scores(rng, y)
        attacks[split] = [""] * 40 + list(names)
        keys = [f"{split}{i}" for i in range(y.size)]
        write_csv(run / f"predictions_{split}.csv", keys, y, s,
                  {k: SampleMeta(f"{k}.jpg", f"g{i % 7}", a) for i, (k, a) in enumerate(zip(keys, attacks[split]))})
        preds[split] = (y, s)
    doc, _ = build_metrics(preds["val"], preds["test"], "f1", attacks=attacks)
    write_json(run / "metrics.json", doc)
    return run, doc


def check_attack_tables(run, doc):
    text = (run / "training_results.txt").read_text(encoding="utf-8")
    page = (run / "report.html").read_text(encoding="utf-8")
    for split in ("val", "test"):
        start = text.index(f"{split.upper()} RESULTS")
        block = text[start:text.index("TEST RESULTS" if split == "val" else "=" * 80, start + 1)]
        assert block.count("Per attack") == 1
        for name, r in doc[split]["by_attack"].items():
            row = re.search(rf"^ +{re.escape(name)} +(\d+) +([\d.]+) +([\d.]+) +([\d.]+)$", block, re.M)
            assert row and row.groups() == (str(r["n"]), f"{r['auc']:.4f}", f"{r['eer']:.4f}", f"{r['recall']:.4f}")
            assert f"<td>{html.escape(name)}</td><td>{r['n']:,}</td><td>{r['auc']:.4f}</td>" in page
    assert page.count("<h3>Per attack</h3>") == 2 and "(unnamed)" in page


def test_attack_table_in_txt_and_html(tmp_path):
    run, doc = attack_run(tmp_path)
    assert list(doc["test"]["by_attack"]) == ["A07", "NeuralTextures", "(unnamed)"]
    render_report(run)
    check_attack_tables(run, doc)


def test_attack_table_recomputed_from_predictions(tmp_path):
    run, doc = attack_run(tmp_path)
    (run / "metrics.json").unlink()
    render_report(run)
    check_attack_tables(run, doc)


def test_no_attack_table_without_attacks(tmp_path):
    run, doc, _ = make_run(tmp_path)
    render_report(run)
    assert "by_attack" not in doc["val"]
    assert "Per attack" not in (run / "training_results.txt").read_text()
    assert "Per attack" not in (run / "report.html").read_text(encoding="utf-8")


def test_txt_and_html_sections(tmp_path):
    """Setup, dataset, threshold and results sections carry the same numbers in the text and on the page."""
    run, doc, config = make_run(tmp_path)
    render_report(run)
    text = (run / "training_results.txt").read_text(encoding="utf-8")
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "Model: efficientnet_b0\n" in text and "Loss: name=focal, gamma=2.0\n" in text
    assert "Strategy: sampler=weighted, minority_augment=True\n" in text
    assert "<td>Model</td><td>efficientnet_b0</td>" in page
    assert f"{'train':<8}{600:>10}{150:>10}{750:>10}   4.00:1 (real majority)\n" in text
    assert "<td>train</td><td>600</td><td>150</td><td>750</td><td>4.00:1 (real majority)</td>" in page
    assert "   Total: 1065\n" in text and "<td><strong>all</strong></td><td>850</td><td>215</td><td>1,065</td>" in page
    chosen = doc["chosen"]
    assert f"   {chosen['method']}: {chosen['threshold']:.6f}   <- chosen\n" in text
    assert f"<td>{chosen['method']}</td><td>{chosen['threshold']:.6f}</td><td>&#10004; chosen</td>" in page
    for split in ("val", "test"):
        rep = doc[split]
        assert f"   F1: {rep['tuned']['f1']:.4f}\n" in text
        assert f"AUC: {rep['auc']:.4f}   AP: {rep['ap']:.4f}   EER: {rep['eer']:.4f}\n" in text
        assert f"<h2>Results: {split}</h2>" in page and f"<td>{rep['auc']:.4f}</td>" in page
    assert f"<pre>{html.escape(text)}</pre>" in page  # the page ends with the text summary, escaped
    order = [page.index(h) for h in ("<h2>Setup</h2>", "<h2>Dataset</h2>", "<h2>Thresholds", "<h2>Results: val",
                                     "<h2>Results: test", "<h2>Plots</h2>", "<h2>training_results.txt</h2>")]
    assert order == sorted(order)


def test_import_loads_neither_matplotlib_nor_sklearn():
    """`dfp stats` and `dfp --help` import pipeline.report's names; the heavy libraries wait for a figure or a
    metrics recomputation."""
    import subprocess
    import sys
    code = ("import sys, pipeline.report; "
            "print(sorted(m for m in ('matplotlib', 'sklearn', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.stdout.strip() == "[]"


def test_console_summary_names_the_threshold_applied_and_the_attacks():
    from pipeline.report import console_summary
    m = {"accuracy": .9, "balanced_accuracy": .8, "precision": .7, "recall": .6, "f1": .6, "mcc": .5, "threshold": .5}
    rep = {"default": m, "tuned": {**m, "threshold": .42, "f1": .66}, "auc": .91, "ap": .8, "eer": .1,
           "by_attack": {"A07": {"n": 3, "auc": .9, "eer": .1, "recall": .6}}}
    tuned = console_summary("test", rep, {"method": "f1", "threshold": .42})
    assert "threshold 0.4200 (f1, tuned on val)" in tuned and "+10.00%" in tuned and "AUC 0.9100" in tuned
    assert any(line.split()[:2] == ["A07", "3"] for line in tuned.splitlines())
    fallback = console_summary("test", rep, {"method": "default", "threshold": .5, "requested": "precision:0.99",
                                             "fallback_reason": "unreachable"})
    assert "(default; precision:0.99 is undefined on val)" in fallback and "tuned on val" not in fallback


def test_threshold_history_is_shown_whichever_key_its_entries_use():
    from pipeline.report.text import threshold_provenance
    history = [{"method": "f1", "value": 0.4, "replaced_at": "A"},  # a run folder written before the one key
               {"method": "eer", "threshold": 0.3, "replaced_at": "B"}, "not an entry"]
    assert threshold_provenance({}, history) == ["Previous: method f1, threshold 0.400000 (replaced A)",
                                                 "Previous: method eer, threshold 0.300000 (replaced B)"]
