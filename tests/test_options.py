"""Each option declared once: `dfp train` has an option for every TrainConfig field and `dfp shard` one for every
ShardParams field, and no other options than the listed ones; the names the command line offers are the ones the
implementing modules build (pipeline/names.py)."""
import csv
import dataclasses
import importlib
import json
import re

import pytest
import typer

from factory import dfp_in_process
from pipeline import cli, names
from pipeline.config import ShardParams, TrainConfig

COMMANDS = typer.main.get_command(cli.app).commands
# switches whose field is their opposite, named for what they do
TRAIN_RENAMED = {"progress": "quiet", "report": "no_report"}
# dfp train's parameters that are no TrainConfig field
TRAIN_NOT_FIELDS = {"no_amp", "overwrite"}
# dfp shard's parameters that are no ShardParams field: the arguments, and how this machine packs
SHARD_NOT_FIELDS = {"input_dir", "out", "more_parts", "workers", "part", "merge", "quiet"}


def _params(command: str) -> set[str]:
    return {p.name for p in COMMANDS[command].params if p.name != "help"}


@pytest.mark.parametrize("command,cls,renamed,not_fields", [
    ("train", TrainConfig, TRAIN_RENAMED, TRAIN_NOT_FIELDS),
    ("shard", ShardParams, {}, SHARD_NOT_FIELDS),
])
def test_every_field_is_an_option_and_every_option_a_field_or_listed(command, cls, renamed, not_fields):
    fields = {f.name for f in dataclasses.fields(cls)}
    params = _params(command)
    missing = sorted(f for f in fields if renamed.get(f, f) not in params)
    assert not missing, f"dfp {command} has no option for {cls.__name__} field(s) {missing}"
    unlisted = sorted(params - {renamed.get(f, f) for f in fields} - not_fields)
    assert not unlisted, f"dfp {command} option(s) {unlisted}: neither a {cls.__name__} field nor listed in this test"
    assert not_fields <= params, f"listed as dfp {command} options but gone: {sorted(not_fields - params)}"


@pytest.mark.parametrize("cls", [TrainConfig, ShardParams])
def test_each_field_spells_out_the_flag_of_its_own_name(cls):
    """config.py names every option as users type it, so a search of the code for `--lr` finds its field; the flag
    must be the field's name (a negated switch, `--quiet` for progress, says the opposite and is listed)."""
    for f in dataclasses.fields(cls):
        flag = f.metadata["flag"]
        if f.metadata["argument"]:
            assert flag is None
            continue
        first = flag.split("/")[0]
        want = "--" + TRAIN_RENAMED.get(f.name, f.name).replace("_", "-")
        assert first == want, f"{cls.__name__}.{f.name}: flag {flag!r}, expected {want}"
        assert f.metadata["negate"] == (f.name in TRAIN_RENAMED)


def test_the_changeable_fields_of_a_resume_are_options():
    from pipeline.resume import CHANGEABLE, RUNTIME
    params = _params("train")
    assert {TRAIN_RENAMED.get(f, f) for f in (*CHANGEABLE, *RUNTIME)} <= params


def test_defaults_are_the_ones_runs_were_made_with():
    assert dataclasses.asdict(TrainConfig(shards="s")) == {
        "shards": "s", "out": "runs/exp", "backend": "auto", "device": "auto", "epochs": 10, "batch_size": 32,
        "lr": 3e-4, "weight_decay": 1e-4, "warmup_epochs": 1.0, "clip": 1.0, "seed": 0, "max_samples_per_class": None,
        "epoch_len": None, "patience": 5, "model": None, "frame_backbone": "efficientnet_b0", "pretrained": False,
        "weights": None, "freeze_backbone": False, "unfreeze_last": 0, "cache_embeddings": False, "cache_views": 0,
        "strategy": "auto", "loss": "focal", "focal_alpha": "0.25", "focal_gamma": 2.0, "sampling": "inverse",
        "class_weights": None, "minority_augment": True, "smote": False, "amp": "auto", "compile": False,
        "workers": 2, "image_size": 224, "audio_seconds": 4.0, "threshold_method": "f1", "resume": None,
        "save_every": 0, "tensorboard": False, "progress": True, "report": True, "cache_dir": None,
        "cache_limit": "20G"}
    assert dataclasses.asdict(ShardParams()) == {
        "modality": "auto", "split": "0.8,0.1,0.1", "seed": 0, "max_count": 5000, "max_size": 1_000_000_000,
        "max_samples_per_class": None, "class_map": None, "group_depth": 0, "dataset": "folders", "protocol": None,
        "val_fraction": 0.1, "ff_compression": "c23", "max_side": None, "sample_rate": 16000, "frames": 16,
        "check": "decode", "faces": False, "face_margin": 1.3, "face_size": 256, "face_quality": 95,
        "debias": False, "reencode": None, "jpeg_quality": None, "chroma": None, "resize_rule": None,
        "image_codec": "jpeg", "trim_silence": None, "fps": None, "max_pixels": 100_000_000, "max_seconds": 3600.0}
    from pipeline.shards import ShardParams as from_shards
    from pipeline.train import TrainConfig as from_train
    assert (from_train, from_shards) == (TrainConfig, ShardParams)


@pytest.fixture
def started(monkeypatch):
    """dfp train's config, the fields it counts as given and its overwrite, instead of a run."""
    import pipeline.train
    seen = {}
    monkeypatch.setattr(pipeline.train, "run_training", lambda cfg, given, overwrite: seen.update(
        cfg=cfg, given=given, overwrite=overwrite))
    return seen


def test_train_without_options_is_the_default_config(tiny_image_shards, started, monkeypatch, capsys):
    code, _, err = dfp_in_process(["train", tiny_image_shards], monkeypatch, capsys)
    assert code == 0, err
    assert started == {"cfg": TrainConfig(shards=str(tiny_image_shards)), "given": {"shards"}, "overwrite": False}


def test_renamed_switches_set_their_fields_and_count_as_given(tiny_image_shards, tmp_path, started, monkeypatch,
                                                              capsys):
    code, _, err = dfp_in_process(["train", tiny_image_shards, "--quiet", "--no-report", "--no-amp", "--overwrite",
                                   "--out", tmp_path / "run", "--warmup-epochs", "0.5", "--clip", "2",
                                   "--no-minority-augment"], monkeypatch, capsys)
    assert code == 0, err
    cfg = started["cfg"]
    assert (cfg.progress, cfg.report, cfg.amp, cfg.minority_augment) == (False, False, "off", False)
    assert (cfg.out, cfg.warmup_epochs, cfg.clip) == (str(tmp_path / "run"), 0.5, 2.0)
    assert started["given"] == {"shards", "progress", "report", "amp", "overwrite", "out", "warmup_epochs", "clip",
                                "minority_augment"}
    assert started["overwrite"] is True


@pytest.mark.parametrize("args,message", [
    (["--clip", "0"], "--clip must be a positive number, got 0.0"),
    (["--clip", "inf"], "--clip must be a positive number, got inf"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be at least 0, got -1.0"),
])
def test_warmup_and_clip_are_checked(args, message, tiny_image_shards, started, monkeypatch, capsys):
    code, _, err = dfp_in_process(["train", tiny_image_shards, *args], monkeypatch, capsys)
    assert code == 2 and err.strip() == f"error: {message}" and not started


def test_shard_without_options_packs_with_the_default_params(tmp_path, monkeypatch, capsys):
    import pipeline.shards
    seen = {}
    monkeypatch.setattr(pipeline.shards, "build_shards", lambda inp, out, params, workers, progress: seen.update(
        params=params, workers=workers, progress=progress))
    monkeypatch.setattr(pipeline.shards, "format_summary", lambda summary: "packed")
    (tmp_path / "in").mkdir()
    code, out, err = dfp_in_process(["shard", tmp_path / "in", tmp_path / "out"], monkeypatch, capsys)
    assert code == 0, err
    assert seen == {"params": ShardParams(), "workers": None, "progress": True}
    code, out, err = dfp_in_process(["shard", tmp_path / "in", tmp_path / "out", "--protocol", tmp_path / "in",
                                     "--no-reencode", "--faces", "--workers", "3", "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    assert seen == {"params": ShardParams(protocol=str(tmp_path / "in"), reencode=False, faces=True), "workers": 3,
                    "progress": False}


def _tiny_train(shards, out, *extra):
    return ["train", shards, "--out", out, "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--model",
            "resnet18", "--backend", "torch", "--workers", "0", "--device", "cpu", "--quiet", "--no-report",
            "--epoch-len", "8", "--patience", "0", *extra]


def _lr(run) -> list[float]:
    with open(run / "history.csv") as f:
        return [float(r["lr"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_warmup_and_clip_reach_the_run_and_a_resume_may_change_them(tiny_image_shards, tmp_path, monkeypatch, capsys):
    import pipeline.train
    clips = []
    step = pipeline.train.train_one_epoch
    monkeypatch.setattr(pipeline.train, "train_one_epoch", lambda *a, **k: clips.append(k["clip"]) or step(*a, **k))
    run = tmp_path / "run"
    code, _, err = dfp_in_process(_tiny_train(tiny_image_shards, run, "--warmup-epochs", "2", "--clip", "0.5"),
                                  monkeypatch, capsys)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert (config["warmup_epochs"], config["clip"], clips) == (2.0, 0.5, [0.5])
    # 2 steps of a 4-step warm-up: the rate after the epoch is 3/4 of --lr (1 epoch of warm-up would reach all of it)
    assert _lr(run) == [pytest.approx(0.75 * 3e-4)]
    code, _, err = dfp_in_process(["train", tiny_image_shards, "--resume", run, "--epochs", "2", "--clip", "0.25",
                                   "--warmup-epochs", "0", "--device", "cpu", "--quiet", "--no-report"],
                                  monkeypatch, capsys)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert (config["warmup_epochs"], config["clip"], clips) == (0.0, 0.25, [0.5, 0.25])
    assert config["resumed"][-1]["changed"] == {"clip": [0.5, 0.25], "epochs": [1, 2], "warmup_epochs": [2.0, 0.0]}


# ---------------------------------------------------------------- names.py against the modules that build them
def test_every_loss_name_is_built():
    from pipeline.losses import make_loss
    for name in names.LOSSES:
        make_loss(name, (3, 1))
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge", (3, 1))


def test_every_sampling_name_is_a_sampling_mode():
    from pipeline.sampling import class_probabilities
    for name in names.SAMPLINGS:
        assert class_probabilities([3, 1], name).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown sampling mode"):
        class_probabilities([3, 1], "oversample")


def test_every_loader_backend_has_its_module():
    from pipeline.loaders import BACKENDS, resolve_backend
    assert set(BACKENDS) == set(names.LOADER_BACKENDS) and names.BACKENDS == ("auto", *names.LOADER_BACKENDS)
    for name in names.LOADER_BACKENDS:
        assert importlib.util.find_spec(f"pipeline.loaders.{ {'torch': 'pytorch'}.get(name, name)}") is not None
    assert resolve_backend("auto") in names.LOADER_BACKENDS


def test_every_dataset_name_has_its_layout_and_every_compression_is_read():
    from pipeline import datasets
    from pipeline.datasets import ffpp
    assert tuple(datasets.MODULES) == names.DATASETS
    for name in names.DATASETS:
        assert callable(datasets.module(name).candidates)
    for comp in names.COMPRESSIONS:
        assert ffpp._sample(["original_sequences", "youtube", comp, "videos", "000.mp4"], comp) == ("real", None, "000")


def test_every_model_name_is_built_and_listed_in_the_help():
    import torchaudio

    from pipeline.backbones import SSL_BUNDLES
    from pipeline.models import build_model
    for modality, models in (("image", names.IMAGE_MODELS), ("video", names.VIDEO_MODELS),
                             ("audio", ("audio_resnet18", "wav2vec2_base"))):
        assert names.DEFAULT_MODEL[modality] in models
        for name in models:
            build_model(name, modality, frame_backbone="resnet18")
    assert tuple(SSL_BUNDLES) == names.SSL_MODELS
    assert all(hasattr(torchaudio.pipelines, bundle) for bundle in SSL_BUNDLES.values())
    model_help = next(p.help for p in COMMANDS["train"].params if p.name == "model")
    for name in (*names.IMAGE_MODELS, *names.AUDIO_MODELS, *names.VIDEO_MODELS):
        assert re.search(rf"(?<![\w:]){name}(?!\w)", model_help), f"--model help does not list {name}"


def test_the_names_and_the_configs_import_nothing_heavy():
    import subprocess
    import sys
    code = ("import sys, pipeline.config, pipeline.names; "
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'typer') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["stats", "audit"])
def test_options_as_for_dfp_shard_default_as_dfp_shard(command):
    defaults = {f.name: f.default for f in dataclasses.fields(ShardParams)}
    shared = [p for p in COMMANDS[command].params if p.name in defaults]
    assert len(shared) >= 7
    for p in shared:
        assert p.default == defaults[p.name], f"dfp {command} --{p.name.replace('_', '-')} defaults to {p.default!r}, " \
                                              f"dfp shard to {defaults[p.name]!r}"
