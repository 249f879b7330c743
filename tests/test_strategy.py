"""Explicit flags beat --strategy auto, the CPU recipe, and the messages around a run (issue 26, items 1, 6, 7)."""
import json
import shutil
import sys

import pytest
from typer.testing import CliRunner

from factory import image_tree
from pipeline.errors import InputError
from pipeline.report.text import MIN_VAL_PER_CLASS, console_summary, report_notes, small_val_note, summary_text
from pipeline.shards import ShardParams, build_shards
from pipeline.train import TrainConfig, decide_recipe, decide_strategy, run_training

SEVERE = {"real": 1000, "fake": 100}
MODERATE = {"real": 300, "fake": 100}


def by(decision: dict) -> dict:
    return {k: (c["value"], c["by"]) for k, c in decision["choices"].items()}


def test_auto_applies_the_flags_the_user_set_and_fills_in_the_rest():
    cfg = TrainConfig(shards="x", loss="weighted_bce", sampling="sqrt", smote=False)
    cfg, decision = decide_strategy(cfg, SEVERE, given={"loss", "sampling", "smote", "epochs"})
    assert (cfg.loss, cfg.sampling, cfg.smote, cfg.minority_augment) == ("weighted_bce", "sqrt", False, True)
    assert by(decision) == {"loss": ("weighted_bce", "user"), "sampling": ("sqrt", "user"),
                            "smote": (False, "user"), "minority_augment": (True, "strategy")}
    assert decision["loss"] == "weighted_bce" and decision["sampling"] == "sqrt"


def test_class_weights_and_a_switched_off_augmentation_count_as_set():
    cfg = TrainConfig(shards="x", class_weights="real=1,fake=3", minority_augment=False)
    cfg, decision = decide_strategy(cfg, MODERATE, given={"class_weights", "minority_augment"})
    assert cfg.class_weights == "real=1,fake=3" and cfg.minority_augment is False
    assert decision["sampling"] == "real=1,fake=3"
    assert by(decision)["sampling"] == ("real=1,fake=3", "user")
    assert by(decision)["minority_augment"] == (False, "user") and by(decision)["loss"] == ("focal", "strategy")


def test_manual_records_defaults_as_defaults():
    _, decision = decide_strategy(TrainConfig(shards="x", strategy="manual", loss="bce"), SEVERE, given={"loss"})
    assert by(decision) == {"loss": ("bce", "user"), "sampling": ("inverse", "default"),
                            "smote": (False, "default"), "minority_augment": (True, "default")}


@pytest.mark.parametrize("device,modality,given,want", [
    ("cpu", "image", set(), {"model": ("resnet18", "cpu_recipe"), "image_size": (64, "cpu_recipe"),
                             "lr": (1e-3, "cpu_recipe")}),
    ("cpu", "image", {"lr"}, {"model": ("resnet18", "cpu_recipe"), "image_size": (64, "cpu_recipe"),
                              "lr": (5e-4, "user")}),
    ("cpu", "image", {"model"}, {"model": ("resnet50", "user"), "image_size": (224, "default"), "lr": (3e-4, "default")}),
    ("cpu", "image", {"image_size"}, {"model": (None, "default"), "image_size": (96, "user"), "lr": (3e-4, "default")}),
    ("cpu", "image", {"weights"}, {"model": (None, "default"), "image_size": (224, "default"), "lr": (3e-4, "default")}),
    ("cuda", "image", set(), {"model": (None, "default"), "image_size": (224, "default"), "lr": (3e-4, "default")}),
    ("cpu", "audio", set(), {"model": (None, "default"), "image_size": (224, "default"), "lr": (3e-4, "default")}),
    ("cpu", "video", set(), {"model": (None, "default"), "image_size": (64, "cpu_recipe"), "lr": (1e-3, "cpu_recipe"),
                             "frame_backbone": ("resnet18", "cpu_recipe")}),
])
def test_the_cpu_recipe_fills_in_only_on_a_cpu_without_model_or_size(device, modality, given, want):
    user = {"lr": 5e-4, "model": "resnet50", "image_size": 96, "weights": "w.pth"}
    cfg = TrainConfig(shards="x", **{k: user[k] for k in given})
    cfg, chosen = decide_recipe(cfg, modality, device, given)
    assert {k: (getattr(cfg, k), b) for k, b in chosen.items()} == want


def test_console_and_text_show_what_the_tuned_threshold_costs():
    def m(acc, bal, f1, mcc, thr):
        return {"threshold": thr, "accuracy": acc, "balanced_accuracy": bal, "precision": 0.5, "recall": 0.9,
                "f1": f1, "mcc": mcc, "specificity": 0.3, "confusion_matrix": [[3, 7], [1, 9]]}
    rep = {"default": m(0.69, 0.60, 0.40, 0.20, 0.5), "tuned": m(0.38, 0.61, 0.49, -0.05, 0.2),
           "auc": 0.7, "ap": 0.6, "eer": 0.3}
    text = console_summary("T", rep, {"method": "f1", "threshold": 0.2})
    assert "accuracy -0.3100 (0.6900 -> 0.3800)" in text and "MCC -0.2500 (0.2000 -> -0.0500)" in text
    assert "balanced accuracy +0.0100" in text
    warning = [line for line in text.splitlines() if "warning" in line]
    assert len(warning) == 1 and "accuracy, MCC fall while F1 rises" in warning[0] and "balanced" not in warning[0]
    config = {"choices": {"loss": {"value": "bce", "by": "user"}, "smote": {"value": False, "by": "strategy"}}}
    text = summary_text({"val": rep, "chosen": {"method": "f1", "threshold": 0.2}, "thresholds": {"f1": 0.2}}, config)
    assert "MCC -0.2500 (0.2000 -> -0.0500)" in text and "Warning: at the tuned threshold accuracy, MCC fall" in text
    assert "Set by you: loss bce" in text and "Chosen by --strategy auto: smote False" in text
    rep["tuned"] = m(0.70, 0.62, 0.45, 0.25, 0.4)
    assert "warning" not in console_summary("T", rep, {"method": "f1", "threshold": 0.4})


def test_a_small_val_split_is_named_with_its_counts():
    note = small_val_note({"real": 40, "fake": MIN_VAL_PER_CLASS - 1})
    assert note and f"40 real and {MIN_VAL_PER_CLASS - 1} fake" in note and f"fewer than {MIN_VAL_PER_CLASS} fake" in note
    assert small_val_note({"real": MIN_VAL_PER_CLASS, "fake": MIN_VAL_PER_CLASS}) is None
    metrics = {"val": {"auc": 0.9, "default": {"confusion_matrix": [[5, 1], [2, 4]]}}, "chosen": {"method": "f1"},
               "thresholds": {"f1": 0.4}}
    assert any("6 real and 6 fake" in n for n in report_notes(metrics))


# ---------------------------------------------------------------- one small run through the CLI (slow: 15-60 s on
# 2 shared cores, shared by the tests that read it)
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("strategy")
    image_tree(root / "in", 18, 9)
    build_shards(root / "in", root / "shards", ShardParams(split="0.6,0.2,0.2"), workers=1, progress=False)
    return root / "shards"


def _train(args, used: dict):
    """`dfp train ARGS` in this process, recording the loss and train-loader options the run really built."""
    import pipeline.losses
    import pipeline.train
    from pipeline.cli import app
    make_loss, make_loader = pipeline.losses.make_loss, pipeline.train.make_loader

    def loss(name, *a, **k):
        used["loss"] = name
        return make_loss(name, *a, **k)

    def loader(shards, split, backend, device, opts, *a, **k):
        if opts.train:
            used["sampling"], used["minority_augment"] = opts.sampling, opts.minority_augment
            used["image_size"] = opts.image_size
        return make_loader(shards, split, backend, device, opts, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline.losses, "make_loss", loss)
        mp.setattr(pipeline.train, "make_loader", loader)
        r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


@pytest.fixture(scope="module")
def explicit_run(shards, tmp_path_factory):
    """Explicit strategy flags, no --model/--image-size on the CPU, --tensorboard and --no-report."""
    out = tmp_path_factory.mktemp("runs") / "run"
    used = {}
    output = _train(["train", shards, "--out", out, "--device", "cpu", "--backend", "torch", "--epochs", "1",
                     "--batch-size", "4", "--workers", "0", "--quiet", "--no-report", "--tensorboard",
                     "--loss", "weighted_bce", "--sampling", "sqrt", "--smote", "--no-minority-augment"], used)
    return out, output, used


@pytest.mark.slow
def test_explicit_flags_are_recorded_and_used(explicit_run):
    out, output, used = explicit_run
    config = json.loads((out / "config.json").read_text())
    assert (config["loss"], config["sampling"], config["minority_augment"]) == ("weighted_bce", "sqrt", False)
    assert {k: (c["value"], c["by"]) for k, c in config["choices"].items() if k in ("loss", "sampling", "smote")} == \
        {"loss": ("weighted_bce", "user"), "sampling": ("sqrt", "user"), "smote": (True, "user")}
    assert used["loss"] == "weighted_bce" and used["sampling"] == "sqrt" and used["minority_augment"] is False
    assert config["smote"]["applied"]  # the head was refit (config.json's "smote" holds the refit's record)
    assert "loss weighted_bce (you), sampling sqrt (you)" in output and "SMOTE on (you)" in output


@pytest.mark.slow
def test_a_cpu_run_without_model_or_size_takes_the_cpu_recipe(explicit_run):
    out, output, used = explicit_run
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["image_size"], config["lr"]) == ("resnet18", 64, 1e-3) and used["image_size"] == 64
    assert config["recipe"]["name"] == "cpu" and config["choices"]["model"] == {"value": "resnet18", "by": "cpu_recipe"}
    assert "CPU recipe" in output


@pytest.mark.slow
def test_no_report_names_no_unwritten_file_and_tensorboard_logs(explicit_run):
    out, output, _ = explicit_run
    assert not (out / "training_results.txt").exists() and not (out / "report.html").exists()
    assert "training_results.txt" not in output and "report.html" not in output and "--no-report" in output
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert {"train_loss", "val_f1"} <= set(acc.Tags()["scalars"])
    assert "warning: val holds" in output  # the tiny val split (a handful of samples per class)


@pytest.mark.slow
def test_resume_keeps_the_users_choices(explicit_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(explicit_run[0], out)
    config = json.loads((out / "config.json").read_text())
    used = {}
    _train(["train", config["shards"], "--resume", out, "--epochs", "2", "--device", "cpu", "--quiet", "--no-report"],
           used)
    resumed = json.loads((out / "config.json").read_text())
    assert resumed["choices"] == config["choices"] and resumed["resumed"][0]["changed"] == {"epochs": [1, 2]}
    assert used == {"loss": "weighted_bce", "sampling": "sqrt", "minority_augment": False, "image_size": 64}


def test_a_broken_tensorboard_fails_before_the_run_folder_exists(shards, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    cfg = TrainConfig(shards=str(shards), out=str(tmp_path / "run"), device="cpu", backend="torch", epochs=1,
                      batch_size=4, workers=0, progress=False, tensorboard=True)
    with pytest.raises(InputError, match="--tensorboard"):
        run_training(cfg, log=lambda *a: None)
    assert not (tmp_path / "run").exists()
