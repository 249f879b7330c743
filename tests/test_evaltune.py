"""dfp evaluate's folders (one per checkpoint, shard set and split) and dfp tune keeping the run's results,
reports and the checkpoint's threshold history in step. They share the session's one tiny run (conftest.py)."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from factory import copy_run, image_tree
from pipeline import checkpoint, evaluate as ev
from pipeline.errors import InputError
from pipeline.metrics import metric_dict
from pipeline.predictions import read_prediction_table

QUIET = dict(device="cpu", log=lambda *a: None)


@pytest.fixture
def tiny(tiny_image_shards, tiny_image_run):
    """(shards, run): conftest's session run (27 images in 0.6/0.2/0.2, one epoch of resnet18 at 32 px)."""
    return tiny_image_shards, tiny_image_run


@pytest.mark.slow
def test_two_sets_with_one_folder_name_keep_two_evaluations(tiny, tmp_path):
    shards, run = tiny
    run = copy_run(run, tmp_path / "run")
    other = tmp_path / "b" / "shards"  # another set under the same folder name
    shutil.copytree(shards, other)
    ckpt = run / "best_model.pth"
    first = ev.evaluate(ckpt, shards, "test", **QUIET)
    ev.evaluate(ckpt, other, "test", **QUIET)
    folders = sorted(p.name for p in (run / "eval").iterdir())
    assert len(folders) == 2 and "shards-test" in folders, folders
    recorded = {json.loads((run / "eval" / f / "metrics.json").read_text())["evaluation"]["shards"] for f in folders}
    assert recorded == {str(shards.resolve()), str(other.resolve())}
    again = ev.evaluate(ckpt, shards, "test", **QUIET)  # the same evaluation replaces its own folder
    assert sorted(p.name for p in (run / "eval").iterdir()) == folders
    assert again["test"]["auc"] == first["test"]["auc"]
    assert not (run / "eval_test").exists()


@pytest.mark.slow
def test_evaluation_report_names_checkpoint_set_and_split_and_only_that_split(tiny, tmp_path):
    shards, run = tiny
    run = copy_run(run, tmp_path / "run")
    ev.evaluate(run / "best_model.pth", shards, "val", **QUIET)
    out = run / "eval" / "shards-val"
    text = (out / "training_results.txt").read_text()
    page = (out / "report.html").read_text()
    ckpt = str((run / "best_model.pth").resolve())
    for doc in (text, page):
        assert ckpt in doc and str(shards.resolve()) in doc
        assert "empty" not in doc and "Results: test" not in doc and "TEST RESULTS" not in doc
    assert "<h1>Deepfake detector evaluation of run/best_model.pth on shards (split val)</h1>" in page
    assert "EVALUATION RESULTS" in text and "VAL RESULTS" in text
    assert [line.split()[0] for line in text.split("DATASET STATISTICS")[1].split("Total:")[0].splitlines()
            if line.strip() and line.split()[0] in ("train", "val", "test")] == ["val"]
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["shards"] == config["evaluation"]["shards"] == str(shards.resolve())
    assert "shards" not in config and set(config["dataset"]["splits"]) == {"val"}


@pytest.mark.slow
def test_a_train_split_evaluation_gets_its_report(tiny, tmp_path):
    shards, run = tiny
    run = copy_run(run, tmp_path / "run")
    ev.evaluate(run / "best_model.pth", shards, "train", **QUIET)
    text = (run / "eval" / "shards-train" / "training_results.txt").read_text()
    assert "TRAIN RESULTS" in text and "VAL RESULTS" not in text
    assert (run / "eval" / "shards-train" / "confusion_matrix_optimal.png").is_file()


def _record(tmp_path, shards, split="test", name="best_model.pth"):
    return {"checkpoint": str(tmp_path / "run" / name), "shards": str(shards), "set": Path(shards).name,
            "split": split}


def _occupy(folder: Path, record: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"evaluation": record}))


def test_eval_folder_never_lands_on_another_evaluation(tmp_path):
    a, b, c = (_record(tmp_path, f"/data/{x}/my set") for x in "abc")
    plain = ev.eval_folder(a)
    assert plain == tmp_path / "run" / "eval" / "my_set-test"
    _occupy(plain, a)
    assert ev.eval_folder(a) == plain  # a re-run replaces its own folder
    hashed = ev.eval_folder(b)
    assert hashed.parent == plain.parent and hashed.name.startswith("my_set-") and hashed.name.endswith("-test")
    assert hashed != plain
    _occupy(hashed, b)
    assert ev.eval_folder(b) == hashed  # the same set finds its hashed folder again
    assert ev.eval_folder(c) not in (plain, hashed)
    ev.eval_folder(c).mkdir()
    (ev.eval_folder(c) / "notes.txt").write_text("not an evaluation")  # a folder dfp did not write
    with pytest.raises(InputError, match="hold other evaluations; give an output folder with --out"):
        ev.eval_folder(c)
    assert ev.eval_folder({**a, "split": "val"}).name == "my_set-val"
    assert ev.eval_folder(_record(tmp_path, "/data/a/my set", name="last.pth")).name == "last-my_set-test"


@pytest.mark.slow
def test_tune_brings_metrics_report_and_evaluations_to_the_checkpoint(tiny, tmp_path):
    shards, run = tiny
    run = copy_run(run, tmp_path / "run")
    ckpt_path = run / "best_model.pth"
    before = json.loads((run / "metrics.json").read_text())["chosen"]
    ev.evaluate(ckpt_path, shards, "test", **QUIET)
    printed = []
    t = ev.tune(ckpt_path, shards, "recall:0.9", device="cpu", log=printed.append)
    ckpt = checkpoint.load(ckpt_path)
    assert ckpt["threshold"] == {"method": "recall:0.9", "threshold": t}
    previous = ckpt["threshold_history"][-1]
    assert (previous["method"], previous["threshold"]) == (before["method"], before["threshold"]) and previous["replaced_at"]
    assert not list(run.glob("*.partial"))
    summary = next(p for p in printed if "test at the new threshold" in p)
    assert f"threshold {t:.4f} (recall:0.9" in summary

    from pipeline.report import render_report
    render_report(run)  # what `dfp report RUN` does: it must agree with the checkpoint
    for folder, splits in ((run, ("val", "test")), (run / "eval" / "shards-test", ("test",))):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["chosen"]["method"] == "recall:0.9" and metrics["chosen"]["threshold"] == t
        assert metrics["thresholds"]["recall:0.9"] == t
        for split in splits:
            table = read_prediction_table(folder / f"predictions_{split}.csv")
            assert metrics[split]["tuned"] == metric_dict(table.labels, table.scores, t)
        text = (folder / "training_results.txt").read_text()
        assert f"Chosen: method recall:0.9, threshold {t:.6f}" in text
        assert f"Previous: method {before['method']}, threshold {before['threshold']:.6f}" in text
        assert f"threshold {t:.6f}" in (folder / "report.html").read_text()
    run_metrics = json.loads((run / "metrics.json").read_text())
    assert "f1" in run_metrics["thresholds"]  # the val table is kept
    # tuned on the run's own val: its saved val results meet the target (the scores tune saw are the ones saved)
    assert run_metrics["val"]["tuned"]["recall"] >= 0.9

    from pipeline.predict import predict_files
    raw = image_tree(tmp_path / "raw", 3, 3, seed=5)
    predict_files(ckpt_path, [raw], tmp_path / "p.csv", device="cpu", workers=0, log=lambda *a: None)
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 6 and [r["label"] for r in rows] == ["fake" if float(r["score"]) >= t else "real" for r in rows]


def test_set_threshold_is_atomic_and_keeps_every_previous_threshold(tmp_path, monkeypatch):
    path = tmp_path / "best_model.pth"
    checkpoint.save(path, {"threshold": {"method": "f1", "value": 0.42}, "model": {"w": torch.zeros(3)}})
    checkpoint.set_threshold(path, "eer", 0.3)
    checkpoint.set_threshold(path, "recall:0.9", 0.2)
    ckpt = checkpoint.load(path)
    assert [(h["method"], h["threshold"]) for h in ckpt["threshold_history"]] == [("f1", 0.42), ("eer", 0.3)]
    before = path.read_bytes()

    def dies_mid_write(obj, f):  # checkpoint.save hands torch an open file
        f.write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(OSError):
        checkpoint.set_threshold(path, "youden", 0.1)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
    assert np.isclose(checkpoint.load(path)["threshold"]["threshold"], 0.2)


def test_tune_leaves_a_folder_without_predictions_as_it_is_and_says_so(tmp_path):
    metrics = {"val": {"tuned": {"threshold": 0.4}}, "chosen": {"method": "f1", "threshold": 0.4}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    printed = []
    ev._retarget(tmp_path, {"method": "eer", "threshold": 0.3}, {"eer": 0.3}, [], {}, printed.append)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert len(printed) == 1 and "still shows the old threshold" in printed[0] and "predictions_val.csv" in printed[0]


@pytest.mark.slow
def test_evaluation_applies_the_runs_val_calibration(tiny, tmp_path):
    """The LLR fitted on the training run's val travels in the checkpoint: evaluating the run's own test split
    gives back the run's test block (calibration, minDCF, actDCF, Cllr), not figures on the raw logit."""
    shards, run = tiny
    run = copy_run(run, tmp_path / "run")
    trained = json.loads((run / "metrics.json").read_text())["test"]
    assert trained["llr"]["fitted_on"] == "val"
    assert checkpoint.load(run / "best_model.pth")["calibration"] == json.loads(
        (run / "metrics.json").read_text())["val"]["llr"]
    got = ev.evaluate(run / "best_model.pth", shards, "test", **QUIET)["test"]
    assert got["llr"] == trained["llr"]
    for key in ("min_dcf", "act_dcf", "cllr", "ece"):
        assert got[key] == pytest.approx(trained[key], abs=1e-6), key


def _old_form(ckpt_path: Path, threshold: float, history: list[dict]) -> None:
    """The checkpoint rewritten as checkpoints stored the threshold before its key was "threshold": "value"."""
    state = torch.load(ckpt_path, weights_only=True)
    state.pop("format")
    checkpoint.save(ckpt_path, {**state, "threshold": {"method": "f1", "value": threshold},
                                "threshold_history": history})


@pytest.mark.slow
def test_a_checkpoint_with_the_old_threshold_key_evaluates_predicts_and_tunes_at_its_threshold(tiny, tmp_path):
    shards, run = tiny
    run = copy_run(run, tmp_path / "run")
    ckpt_path = run / "best_model.pth"
    scores = sorted(read_prediction_table(run / "predictions_test.csv").scores)
    t = float(scores[len(scores) // 2])  # a stored threshold that no default (0.5) could stand in for
    _old_form(ckpt_path, t, [{"method": "eer", "value": 0.25, "replaced_at": "2026-01-01T00:00:00+00:00"}])
    metrics = ev.evaluate(ckpt_path, shards, "test", **QUIET)
    assert metrics["chosen"] == {"method": "f1", "threshold": t} and metrics["test"]["tuned"]["threshold"] == t
    from pipeline.predict import predict_files
    raw = image_tree(tmp_path / "raw", 3, 3, seed=5)
    predict_files(ckpt_path, [raw], tmp_path / "p.csv", device="cpu", workers=0, log=lambda *a: None)
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["label"] for r in rows] == ["fake" if float(r["score"]) >= t else "real" for r in rows]
    ev.tune(ckpt_path, shards, "youden", **QUIET)
    # the replaced thresholds, old entries included, come out under the one key in the checkpoint and metrics.json
    expected = [("eer", 0.25), ("f1", t)]
    for history in (checkpoint.load(ckpt_path)["threshold_history"],
                    json.loads((run / "metrics.json").read_text())["threshold_history"]):
        assert [(h["method"], h["threshold"]) for h in history] == expected and all("value" not in h for h in history)
    assert checkpoint.load(ckpt_path)["threshold"]["method"] == "youden"
    text = (run / "training_results.txt").read_text()
    assert "Previous: method eer, threshold 0.250000" in text and f"Previous: method f1, threshold {t:.6f}" in text


def test_stored_threshold_reads_both_keys_and_defaults_to_one_half():
    assert checkpoint.stored_threshold({"threshold": {"method": "f1", "value": 0.3, "requested": "x"}}) == \
        {"method": "f1", "threshold": 0.3, "requested": "x"}
    assert checkpoint.stored_threshold({"threshold": {"method": "f1", "threshold": 0.3}}) == \
        {"method": "f1", "threshold": 0.3}
    assert checkpoint.stored_threshold({}) == {"method": "default", "threshold": 0.5}


@pytest.mark.slow
def test_nan_scores_end_train_and_evaluate_alike_with_exit_1(tiny, tmp_path, monkeypatch, capsys):
    from factory import dfp_in_process
    from pipeline import scoring
    shards, run = tiny
    run = copy_run(run, tmp_path / "run")
    state = torch.load(run / "best_model.pth", weights_only=True)
    state.pop("format")
    checkpoint.save(run / "best_model.pth", {**state, "model": {k: torch.full_like(v, float("nan"))
                                                                if v.is_floating_point() else v
                                                                for k, v in state["model"].items()}})
    code, _, err = dfp_in_process(["evaluate", run / "best_model.pth", shards, "--device", "cpu"], monkeypatch, capsys)
    assert (code, err.count("\n")) == (1, 1) and "the model produced NaN scores on" in err, err
    real = scoring.predict
    nan = lambda *a, **k: (lambda r: (r[0], r[1], np.full_like(r[2], np.nan), r[3]))(real(*a, **k))
    monkeypatch.setattr(scoring, "predict", nan)  # the epochs' own validation keeps its finite scores
    code, _, err = dfp_in_process(["train", shards, "--out", tmp_path / "new", "--device", "cpu", "--epochs", "1",
                                   "--batch-size", "4", "--image-size", "32", "--workers", "0", "--model", "resnet18",
                                   "--backend", "torch", "--quiet"], monkeypatch, capsys)
    assert (code, err.count("\n")) == (1, 1) and "the model produced NaN scores on split val" in err, err
