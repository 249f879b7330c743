import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from factory import (audio_tree, copy_run, dfp_in_process, image_tree, same_threads_env, smooth_image, video_tree,
                     write_jpeg)
from pipeline.shards import ShardParams, build_shards
from pipeline.train import TrainConfig, decide_strategy, run_training

REPO = Path(__file__).resolve().parents[1]


def tiny_shards(root: Path, modality: str) -> Path:
    make = {"image": lambda p: image_tree(p, 18, 9), "audio": audio_tree, "video": video_tree}[modality]
    make(root / "in")
    build_shards(root / "in", root / "shards", ShardParams(frames=2, split="0.6,0.2,0.2"), workers=1, progress=False)
    return root / "shards"


def tiny_config(shards, out, **kw) -> TrainConfig:
    base = dict(shards=str(shards), out=str(out), backend="torch", device="cpu", epochs=1, batch_size=4,
                image_size=32, audio_seconds=0.5, workers=0, progress=False, model=None)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def image_shards(tiny_image_shards):
    """The session's 27 tiny images (conftest.py); read only."""
    return tiny_image_shards


RUN_FILES = ["best_model.pth", "last.pth", "config.json", "history.csv", "predictions_val.csv", "predictions_test.csv",
             "metrics.json", "training_curves.png", "confusion_matrix_default.png", "confusion_matrix_optimal.png",
             "roc_curve.png", "pr_curve.png", "threshold_analysis.png", "dataset_stats.png", "training_results.txt",
             "report.html"]


def test_image_run_writes_the_whole_run_directory(image_shards, tmp_path):
    out = run_training(tiny_config(image_shards, tmp_path / "run", model="resnet18", epochs=2, backend="dali"), log=lambda *a: None)
    for f in RUN_FILES:
        assert (out / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"val", "test", "thresholds", "chosen", "skipped_samples", "rescued_batches"}
    assert metrics["skipped_samples"] == metrics["rescued_batches"] == {"val": 0, "test": 0}
    assert set(metrics["val"]["default"]) >= {"threshold", "accuracy", "balanced_accuracy", "precision", "recall", "f1",
                                              "specificity", "mcc", "confusion_matrix"}
    ckpt = torch.load(out / "best_model.pth", weights_only=True)
    assert ckpt["threshold"]["threshold"] == metrics["chosen"]["threshold"]
    assert ckpt["modality"] == "image" and ckpt["classes"] == ["real", "fake"]
    assert ckpt["preprocess"]["image_size"] == 32
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[0]["samples_per_s"]) > 0
    preds = list(csv.DictReader(open(out / "predictions_test.csv")))
    assert preds and all(p["source"].startswith(("real/", "fake/")) for p in preds)
    config = json.loads((out / "config.json").read_text())
    assert config["strategy_decision"]["severity"] == "moderate"  # 2:1 train split
    assert config["strategy_decision"]["sampling"] == "inverse"


def check_default_metrics(out: Path, split: str = "val") -> None:
    """metrics.json's numbers at 0.5 are those of predictions_SPLIT.csv recomputed with scikit-learn, one row per sample."""
    from sklearn.metrics import accuracy_score, confusion_matrix
    rows = list(csv.DictReader(open(out / f"predictions_{split}.csv")))
    y = np.array([int(r["label"]) for r in rows])
    pred = (np.array([float(r["score"]) for r in rows]) >= 0.5).astype(int)
    m = json.loads((out / "metrics.json").read_text())[split]["default"]
    assert len(rows) == sum(json.loads((out / "config.json").read_text())["dataset"]["splits"][split].values())
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1]).tolist()


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_one_short_epoch_per_modality(tmp_path, modality):
    shards = tiny_shards(tmp_path, modality)
    kw = {"frame_backbone": "resnet18"} if modality == "video" else {}
    out = run_training(tiny_config(shards, tmp_path / "run", report=False, **kw), log=lambda *a: None)
    check_default_metrics(out)
    ckpt = torch.load(out / "best_model.pth", weights_only=True)
    assert ckpt["modality"] == modality


@pytest.mark.slow
def test_bf16_autocast_on_cpu_trains(image_shards, tmp_path):
    out = run_training(tiny_config(image_shards, tmp_path / "run", model="resnet18", amp="bf16", report=False),
                       log=lambda *a: None)
    assert json.loads((out / "config.json").read_text())["precision"] == "torch.bfloat16"
    assert np.isfinite(float(list(csv.DictReader(open(out / "history.csv")))[0]["train_loss"]))


@pytest.mark.parametrize("counts,severity,sampling,smote", [
    ({"real": 150, "fake": 100}, "mild", "natural", False),
    ({"real": 300, "fake": 100}, "moderate", "inverse", False),
    ({"real": 1000, "fake": 100}, "severe", "inverse", True),
])
def test_strategy_auto_follows_the_seed_table(counts, severity, sampling, smote):
    cfg, decision = decide_strategy(TrainConfig(shards="x", sampling="sqrt", loss="bce"), counts)
    assert decision["severity"] == severity and cfg.sampling == sampling and cfg.smote is smote
    assert cfg.loss == "focal" and cfg.minority_augment is (severity != "mild")
    manual, _ = decide_strategy(TrainConfig(shards="x", strategy="manual", sampling="sqrt", loss="bce"), counts)
    assert manual.sampling == "sqrt" and manual.loss == "bce"


def test_smote_refits_the_head_and_reports(image_shards, tmp_path):
    out = run_training(tiny_config(image_shards, tmp_path / "run", model="resnet18", strategy="manual", smote=True,
                                   report=False), log=lambda *a: None)
    info = json.loads((out / "config.json").read_text())["smote"]
    assert info["applied"] and info["train_after"]["real"] == info["train_after"]["fake"]
    assert "f1_tuned" in info["val_before"] and "f1_tuned" in info["val_after"]


def test_nonfinite_loss_steps_are_skipped_then_stop(image_shards):
    from pipeline.engine import train_one_epoch
    from pipeline.errors import TrainingError
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(2, 3), torch.ones(2), ["a", "b"])] * 6
    calls = {"n": 0}

    def loss_fn(logits, y):
        calls["n"] += 1
        bad = calls["n"] in (2, 3)
        return logits.sum() * (float("nan") if bad else 1.0)

    before = model.weight.detach().clone()
    st = train_one_epoch(model, loss_fn, opt, None, batches, torch.device("cpu"), None, None, progress=False,
                         max_nonfinite=3)
    assert st["nonfinite_steps"] == 2 and st["steps"] == 4
    assert not torch.equal(before, model.weight)
    with pytest.raises(TrainingError, match="not finite for 3 steps"):
        train_one_epoch(model, lambda l, y: l.sum() * float("inf"), opt, None, batches, torch.device("cpu"), None,
                        None, progress=False, max_nonfinite=3)


def _cli(*args, env=None, **kw):
    """The real `dfp` process: for what only a process shows (a SIGKILL, torchrun)."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, **kw)


def _dfp(*args, monkeypatch, capsys):
    return dfp_in_process(args, monkeypatch, capsys)


def _train_args(shards, out, backend, epochs=2):
    # 6 steps an epoch, a record every 2: wherever the kill lands in epoch 1, the last record is mid-epoch
    return ["train", shards, "--out", out, "--epochs", str(epochs), "--batch-size", "4", "--image-size", "32",
            "--model", "resnet18", "--backend", backend, "--workers", "0", "--device", "cpu", "--quiet", "--no-report",
            "--save-every", "2", "--patience", "0", "--epoch-len", "24"]


def _history(out):
    return list(csv.DictReader(open(out / "history.csv")))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_sigkill_mid_epoch_then_resume_replays_the_uninterrupted_run(image_shards, tmp_path, backend, monkeypatch,
                                                                     capsys):
    full = tmp_path / "full"  # uninterrupted, in this process; the killed one is a real process
    code, _, err = _dfp(*_train_args(image_shards, full, backend), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, _train_args(image_shards, out, backend))],
                            cwd=REPO, env=same_threads_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "last.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(out / "last.pth", weights_only=True)["position"]
    assert saved["epoch"] == 0 and saved["batch"] in (2, 4)  # killed mid-epoch 1
    assert saved["totals"]["samples"] == 4 * saved["batch"]  # the epoch's partial sums travel with it
    r = _cli("train", image_shards, "--resume", out, "--quiet", "--no-report", "--device", "cpu",
             env=same_threads_env())
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    want, got = _history(full), _history(out)
    assert [int(x["epoch"]) for x in got] == [1, 2]
    for a, b in zip(want, got):
        for col in ("train_loss", "val_loss", "val_f1", "val_auc", "val_f1_tuned"):
            assert float(b[col]) == pytest.approx(float(a[col]), abs=1e-6), (backend, a["epoch"], col)
        assert a["lr"] == b["lr"]
    m_full, m_run = (json.loads((p / "metrics.json").read_text()) for p in (full, out))
    assert m_run["test"]["auc"] == pytest.approx(m_full["test"]["auc"], abs=1e-6)


@pytest.mark.slow
def test_resume_applies_changeable_flags_and_refuses_the_rest(image_shards, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = _dfp(*_train_args(image_shards, out, "torch", epochs=1), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    before = (out / "last.pth").read_bytes()
    for flag, value, needle in (("--seed", "3", "--seed 3"), ("--loss", "bce", "--loss bce"),
                                ("--image-size", "48", "--image-size 48"), ("--out", tmp_path / "x", "--out")):
        code, _, err = _dfp("train", image_shards, "--resume", out, flag, value, "--device", "cpu",
                            monkeypatch=monkeypatch, capsys=capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    other = tmp_path / "other"
    image_tree(other / "in", 6, 6)
    build_shards(other / "in", other / "shards", ShardParams(), workers=1, progress=False)
    code, _, err = _dfp("train", other / "shards", "--resume", out, "--device", "cpu", monkeypatch=monkeypatch,
                        capsys=capsys)
    assert code == 2 and "shards differ" in err
    assert (out / "last.pth").read_bytes() == before  # a refused resume leaves the run alone
    code, _, err = _dfp("train", image_shards, "--resume", out, "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
                        "--quiet", "--no-report", "--device", "cpu", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 2 and config["batch_size"] == 8 and config["lr"] == 1e-3
    assert config["resumed"] == [{"at_epoch": 2, "at_batch": 0, "changed": {
        "batch_size": [4, 8], "epochs": [1, 2], "lr": [3e-4, 1e-3]}}]
    assert [int(x["epoch"]) for x in _history(out)] == [1, 2]


def test_a_mid_epoch_position_is_remapped_to_another_batch_or_world_size():
    from pipeline.resume import Position
    p = Position(epoch=1, batch=5, world_size=2, batch_size=8)  # 80 plan positions done
    assert p.remap(world_size=1, batch_size=16) == 0 and (p.batch, p.world_size, p.batch_size) == (5, 1, 16)
    assert p.remap(world_size=3, batch_size=16) == 32 and p.batch == 1  # 48 done in new steps: 32 run again


def _torchrun(shards, out, ranks: int, port: int, backend="torch"):
    """The real CLI under torchrun; a run that does not exit within the limit fails the test (a teardown hang)."""
    env = dict(os.environ, DFP_RECORD_KEYS="1", OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", f"--master_port={port}",
            str(REPO / "scripts" / "train.py"), str(shards), "--out", str(out), "--epochs", "1", "--batch-size", "3",
            "--image-size", "32", "--model", "resnet18", "--backend", backend, "--workers", "0", "--device", "cpu",
            "--quiet", "--no-report", "--strategy", "manual", "--sampling", "natural"]
    try:
        r = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun with {ranks} ranks did not exit within 300 s; last output: {str(e.stdout)[-500:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def two_rank_run(tiny_image_shards, tmp_path_factory):
    """One torchrun run of 2 ranks (gloo, torch loader), read by both torchrun tests."""
    out = tmp_path_factory.mktemp("torchrun") / "run"
    _torchrun(tiny_image_shards, out, 2, 29517)
    return out


@pytest.mark.slow
def test_torchrun_runs_always_exit(two_rank_run, image_shards, tmp_path):
    """A teardown deadlock (reducer destroying gloo's group with the GIL held) hung about one run in six.
    Three runs: two_rank_run's (2 ranks, torch), then 3 ranks (torch) and 2 ranks (dali) here."""
    runs = [(two_rank_run, 2)]
    for i, (ranks, backend) in enumerate(((3, "torch"), (2, "dali")), start=1):
        _torchrun(image_shards, tmp_path / f"run{i}", ranks, 29521 + i, backend=backend)
        runs.append((tmp_path / f"run{i}", ranks))
    for out, ranks in runs:
        config = json.loads((out / "config.json").read_text())
        assert config["distributed"] == {"world_size": ranks, "weights_identical": True}


@pytest.mark.slow
def test_torchrun_two_ranks_gloo(two_rank_run):
    out = two_rank_run
    k0 = (out / "keys_rank0_epoch0.txt").read_text().split()
    k1 = (out / "keys_rank1_epoch0.txt").read_text().split()
    assert len(k0) == len(k1) > 0
    # natural sampling is a permutation: ranks see disjoint samples apart from the wrap-around top-up
    assert len(set(k0) & set(k1)) <= 3
    config = json.loads((out / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "weights_identical": True}
    metrics = json.loads((out / "metrics.json").read_text())
    preds = list(csv.DictReader(open(out / "predictions_val.csv")))
    assert len(preds) == len({p["key"] for p in preds}) == sum(metrics["val"]["default"]["confusion_matrix"][0]) + \
        sum(metrics["val"]["default"]["confusion_matrix"][1])


@pytest.mark.slow
def test_bad_training_inputs_exit_2(tmp_path, image_shards, monkeypatch, capsys):
    one = tmp_path / "one"
    rng = np.random.default_rng(0)
    for i in range(6):
        write_jpeg(one / "real" / f"{i}.jpg", smooth_image(rng, 16, 16))
    for i, split in enumerate(["val", "test"]):
        pass
    # a pre-split input whose train split holds a single class
    pre = tmp_path / "pre"
    for split in ("train", "val", "test"):
        write_jpeg(pre / split / "real" / "a.jpg", smooth_image(rng, 16, 16))
        if split != "train":
            write_jpeg(pre / split / "fake" / "b.jpg", smooth_image(rng, 16, 16))
    build_shards(pre, tmp_path / "pre_shards", ShardParams(), workers=1, progress=False)
    cases = [
        (["train", tmp_path / "pre_shards", "--out", tmp_path / "r1", "--device", "cpu"], "no 'fake' samples"),
        (["train", image_shards, "--out", tmp_path / "r2", "--model", "audio_resnet18", "--device", "cpu"], "does not take image"),
        (["train", tmp_path / "nowhere", "--out", tmp_path / "r3"], "not found"),
        (["train", image_shards, "--resume", tmp_path / "r4"], "not found"),
        (["train", image_shards, "--threshold-method", "precision:2"], "--threshold-method"),
    ]
    (tmp_path / "r4").mkdir()
    (tmp_path / "r4" / "last.pth").write_bytes(b"not a checkpoint")
    cases[3] = (["train", image_shards, "--resume", tmp_path / "r4"], "unreadable")
    monkeypatch.chdir(tmp_path)  # the cases without --out would name a default folder here
    for args, needle in cases:
        code, _, err = _dfp(*args, monkeypatch=monkeypatch, capsys=capsys)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


@pytest.mark.slow
def test_evaluate_tune_predict_and_report_commands(image_shards, tiny_image_run, tmp_path, monkeypatch, capsys):
    def dfp(*args):
        code, _, err = _dfp(*args, monkeypatch=monkeypatch, capsys=capsys)
        assert code == 0, err
    out = copy_run(tiny_image_run, tmp_path / "run")  # the session's run of tiny_config(image_shards, model="resnet18")
    dfp("evaluate", out / "best_model.pth", image_shards, "--split", "test", "--out", tmp_path / "ev", "--device", "cpu")
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    run_metrics = json.loads((out / "metrics.json").read_text())
    assert ev["test"]["auc"] == pytest.approx(run_metrics["test"]["auc"], abs=1e-6)
    dfp("tune", out / "best_model.pth", image_shards, "--method", "youden", "--device", "cpu")
    ckpt = torch.load(out / "best_model.pth", weights_only=True)
    assert ckpt["threshold"]["method"] == "youden"
    assert ckpt["threshold"]["threshold"] == pytest.approx(run_metrics["thresholds"]["youden"], abs=1e-6)
    folder = tmp_path / "raw"
    image_tree(folder, 3, 2)
    (folder / "real" / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    dfp("predict", out / "best_model.pth", folder, "--out", tmp_path / "p.csv", "--device", "cpu")
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 6
    broken = [x for x in rows if x["path"].endswith("broken.jpg")][0]
    assert broken["error"] and not broken["score"]
    for x in rows:
        if not x["error"]:
            assert x["label"] == ("fake" if float(x["score"]) >= ckpt["threshold"]["threshold"] else "real")
    (out / "report.html").unlink()
    dfp("report", out)
    assert (out / "report.html").stat().st_size > 10000


@pytest.mark.slow
def test_mid_epoch_checkpoint_resumes_the_remaining_batches(image_shards, tmp_path, monkeypatch):
    from pipeline.loaders import Loader
    monkeypatch.setenv("DFP_RECORD_KEYS", "1")
    kw = dict(model="resnet18", report=False, save_every=2)
    full = run_training(tiny_config(image_shards, tmp_path / "full", **kw), log=lambda *a: None)
    all_keys = (full / "keys_rank0_epoch0.txt").read_text().split()

    real_iter = Loader.__iter__

    def dying_iter(self):
        for i, item in enumerate(real_iter(self)):
            if self.sampler is not None and i == 3:
                raise KeyboardInterrupt  # killed during the 4th batch, after the step-2 checkpoint
            yield item

    monkeypatch.setattr(Loader, "__iter__", dying_iter)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_config(image_shards, out, **kw), log=lambda *a: None)
    saved = torch.load(out / "last.pth", weights_only=True)
    assert (saved["position"]["epoch"], saved["position"]["batch"], saved["epoch"]) == (0, 2, -1)
    monkeypatch.setattr(Loader, "__iter__", real_iter)
    run_training(tiny_config(image_shards, out, resume=str(out), **kw), log=lambda *a: None)
    resumed = (out / "keys_rank0_epoch0.txt").read_text().split()
    assert resumed == all_keys[2 * 4:]  # exactly the batches the killed run had not trained on
    assert len(list(csv.DictReader(open(out / "history.csv")))) == 1


@pytest.mark.parametrize("fallback", [False, True])
def test_metrics_json_is_recomputable_from_the_predictions(image_shards, tmp_path, monkeypatch, fallback):
    from pipeline import metrics as metrics_module
    from pipeline.thresholds import ThresholdUndefined
    from recompute import read_csv, run_mismatches
    if fallback:  # the tiny model's scores may or may not reach a precision target: make it unreachable
        tune_candidates = metrics_module.tune_candidates

        def unreachable_precision(candidates, name, value):
            if name == "precision":
                raise ThresholdUndefined("unreachable in this test")
            return tune_candidates(candidates, name, value)

        monkeypatch.setattr(metrics_module, "tune_candidates", unreachable_precision)
    lines = []
    out = run_training(tiny_config(image_shards, tmp_path / "run", model="resnet18", report=fallback,
                                   threshold_method="precision:0.9" if fallback else "f1"), log=lines.append)
    metrics = json.loads((out / "metrics.json").read_text())
    assert run_mismatches(metrics, out) == []
    _, val_scores = read_csv(out / "predictions_val.csv")
    assert metrics["thresholds"]["f1"] in set(val_scores)  # a tuned threshold is a score, to the last bit
    chosen = metrics["chosen"]
    ckpt = torch.load(out / "best_model.pth", weights_only=True)
    assert ckpt["threshold"] == chosen  # one record, one key for the number
    # the small-val warning (printed at the start and beside the results) is another test's subject
    warnings = [line for line in lines if str(line).startswith("warning:") and "fewer than 30" not in str(line)]
    if not fallback:
        assert chosen == {"method": "f1", "threshold": metrics["thresholds"]["f1"]}
        return
    assert chosen == {"method": "default", "threshold": 0.5, "requested": "precision:0.9",
                      "fallback_reason": "on val, unreachable in this test"}
    assert len(warnings) == 1 and "precision:0.9 cannot be used" in warnings[0]
    assert "Requested: method precision:0.9" in (out / "training_results.txt").read_text()
    assert "unreachable in this test" in (out / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_killed_between_the_last_step_and_validation_resumes_to_one_row_per_epoch(image_shards, tmp_path, monkeypatch):
    """The window where an epoch's batches are all trained but its row is not yet written: the resumed run
    must still validate that epoch, and report it with the whole epoch's sums."""
    import pipeline.train as train
    kw = dict(model="resnet18", report=False, save_every=1, epochs=2, patience=0)
    full = run_training(tiny_config(image_shards, tmp_path / "full", **kw), log=lambda *a: None)
    real_validate = train._validate

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_validate", killed)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_config(image_shards, out, **kw), log=lambda *a: None)
    saved = torch.load(out / "last.pth", weights_only=True)["position"]
    assert saved["epoch"] == 0 and saved["batch"] > 0 and not saved["history"]
    monkeypatch.setattr(train, "_validate", real_validate)
    run_training(tiny_config(image_shards, out, resume=str(out), **kw), log=lambda *a: None)
    want, got = _history(full), _history(out)
    assert [r["epoch"] for r in got] == ["1", "2"]
    for a, b in zip(want, got):
        for col in ("train_loss", "val_loss", "val_auc"):
            assert float(b[col]) == pytest.approx(float(a[col]), abs=1e-6), col
