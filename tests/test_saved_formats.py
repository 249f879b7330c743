"""Shards, checkpoints and run folders written by an earlier dfp still verify, evaluate, predict, tune, report and
resume. tests/data/saved_2026-12 holds what tests/data/saved_2026-12/make.py wrote on 2026-12-02 (27 synthetic
images, timm's 99k-parameter test_efficientnet, one epoch at 32 px): keep those bytes as they are, so a change of a
stored key or layout that forgets the old form fails here."""
import csv
import json
import shutil
from pathlib import Path

import pytest

from factory import dfp_in_process

SAVED = Path(__file__).parent / "data" / "saved_2026-12"
SAVED_THRESHOLD = 0.5137432813644409  # the tuned threshold the saved checkpoint and metrics.json hold


@pytest.fixture
def saved(tmp_path) -> Path:
    shutil.copytree(SAVED, tmp_path / "saved", ignore=shutil.ignore_patterns("make.py"))
    return tmp_path / "saved"


def _scores(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        return {r["key"]: float(r["score"]) for r in csv.DictReader(f)}


def test_the_saved_bytes_are_the_ones_the_tests_expect():
    metrics = json.loads((SAVED / "run" / "metrics.json").read_text())
    assert metrics["val"]["tuned"]["threshold"] == SAVED_THRESHOLD
    assert len(_scores(SAVED / "run" / "predictions_test.csv")) == 6


def test_saved_shards_verify(saved, monkeypatch, capsys):
    code, out, err = dfp_in_process(["verify", saved / "shards"], monkeypatch, capsys)
    assert code == 0, err


def test_saved_checkpoint_evaluates_to_its_own_scores_at_its_threshold(saved, monkeypatch, capsys):
    code, out, err = dfp_in_process(["evaluate", saved / "run" / "best_model.pth", saved / "shards", "--device", "cpu",
                                     "--backend", "torch"], monkeypatch, capsys)
    assert code == 0, err
    folder = saved / "run" / "eval" / "shards-test"
    now, then = _scores(folder / "predictions_test.csv"), _scores(saved / "run" / "predictions_test.csv")
    assert now.keys() == then.keys()
    assert max(abs(now[k] - then[k]) for k in now) < 1e-5
    assert json.loads((folder / "metrics.json").read_text())["test"]["tuned"]["threshold"] == SAVED_THRESHOLD


def test_saved_checkpoint_predicts_the_test_images_as_evaluate_scored_them(saved, tmp_path, monkeypatch, capsys):
    import tarfile
    for tar in (saved / "shards" / "test").glob("*.tar"):
        with tarfile.open(tar) as t:
            t.extractall(tmp_path / "in", members=[m for m in t.getmembers() if m.name.endswith(".jpg")],
                         filter="data")
    code, out, err = dfp_in_process(["predict", saved / "run" / "best_model.pth", tmp_path / "in", "--out",
                                     tmp_path / "p.csv", "--device", "cpu", "--workers", "0"], monkeypatch, capsys)
    assert code == 0, err
    with open(tmp_path / "p.csv", newline="") as f:
        rows = {Path(r["path"]).stem: r for r in csv.DictReader(f)}
    then = _scores(saved / "run" / "predictions_test.csv")
    assert rows.keys() == then.keys()
    for key, r in rows.items():
        assert abs(float(r["score"]) - then[key]) < 1e-5
        assert r["label"] == ("fake" if float(r["score"]) >= SAVED_THRESHOLD else "real")
    # the saved scores lie on both sides of the stored threshold, so a predict that fell back to 0.5 fails here
    assert {r["label"] for r in rows.values()} == {"real", "fake"}


def test_saved_checkpoint_retunes_and_keeps_the_old_threshold_in_its_history(saved, monkeypatch, capsys):
    ckpt = saved / "run" / "best_model.pth"
    code, out, err = dfp_in_process(["tune", ckpt, saved / "shards", "--method", "youden", "--device", "cpu",
                                     "--backend", "torch"], monkeypatch, capsys)
    assert code == 0, err
    import torch
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    history = json.dumps(stored.get("threshold_history"))
    assert str(SAVED_THRESHOLD) in history
    assert json.loads((saved / "run" / "metrics.json").read_text())["chosen"]["method"] == "youden"


def test_saved_run_reports(saved, monkeypatch, capsys):
    (saved / "run" / "report.html").unlink(missing_ok=True)
    code, out, err = dfp_in_process(["report", saved / "run"], monkeypatch, capsys)
    assert code == 0, err
    assert (saved / "run" / "report.html").stat().st_size > 0


@pytest.mark.slow
def test_saved_run_resumes_for_another_epoch(saved, monkeypatch, capsys):
    run = saved / "run"
    first = (run / "history.csv").read_text().splitlines()
    code, out, err = dfp_in_process(["train", saved / "shards", "--resume", run, "--epochs", "2", "--device", "cpu",
                                     "--quiet", "--no-report"], monkeypatch, capsys)
    assert code == 0, err
    rows = (run / "history.csv").read_text().splitlines()
    assert rows[:2] == first[:2] and len(rows) == 3  # header, the saved epoch unchanged, one new epoch
    assert json.loads((run / "config.json").read_text())["resumed"][-1]["changed"]["epochs"] == [1, 2]
