"""Frozen-backbone probes: --freeze-backbone, --unfreeze-last N, --cache-embeddings [--cache-views K].

Tiny timm models with random weights (pretrained=False), saved with safetensors and loaded with --weights:
nothing downloads. The end-to-end runs share one module fixture (a probe with and without the cache)."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from factory import image_tree
from test_train import tiny_config, tiny_shards
from pipeline import embcache, freeze
from pipeline.errors import ModelError, UsageError
from pipeline.models import build_model
from pipeline.train import run_training

timm = pytest.importorskip("timm")
REPO = Path(__file__).resolve().parents[1]
TINY = "test_resnet"  # 0.4 M parameters, BatchNorm in every block: eval mode is visible in its running statistics
QUIET = lambda *a, **k: None


def _weights(path: Path, seed: int = 1) -> tuple[Path, dict]:
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    sd = timm.create_model(TINY, pretrained=False).state_dict()
    save_file(sd, str(path))
    return path, {k: v for k, v in sd.items() if not k.startswith("fc.")}


def _probe_config(shards, out, weights, **kw):
    return tiny_config(shards, out, model="timm:" + TINY, weights=str(weights), report=False,
                       **{"freeze_backbone": True, "epochs": 2, **kw})


def _no_augmentation(monkeypatch):
    """Training batches through the evaluation transform (the loaders' own switch, forced off)."""
    import pipeline.loaders as loaders
    real = loaders.LoaderConfig
    monkeypatch.setattr(loaders, "LoaderConfig", lambda m, size, feat, share, augment, **k: real(
        m, size, feat, 0.0, False, **k))


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """The same probe (same seed, shards and weights file) over the images and over cached embeddings, with the
    training augmentation off so both see the same inputs."""
    root = tmp_path_factory.mktemp("probe")
    shards = tiny_shards(root, "image")
    weights, sd = _weights(root / "w.safetensors")
    with pytest.MonkeyPatch.context() as mp:
        _no_augmentation(mp)
        plain = run_training(_probe_config(shards, root / "plain", weights), log=QUIET)
        cached = run_training(_probe_config(shards, root / "cached", weights, cache_embeddings=True), log=QUIET)
    return {"shards": shards, "weights": weights, "sd": sd, "plain": plain, "cached": cached, "root": root}


def _model(run: Path, name: str = "best_model.pth") -> dict:
    return torch.load(run / name, weights_only=True)["model"]


# ---------------------------------------------------------------- blocks and freezing (no training)
@pytest.mark.parametrize("name,modality,extra,parent,blocks", [
    ("resnet18", "image", {}, "", ["layer1", "layer2", "layer3", "layer4"]),
    ("efficientnet_b0", "image", {}, "features", [str(i) for i in range(1, 8)]),
    ("audio_resnet18", "audio", {}, "", ["layer1", "layer2", "layer3", "layer4"]),
    ("frame_pool", "video", {"frame_backbone": "timm:test_vit", "image_size": 32}, "frame.blocks",
     [str(i) for i in range(6)]),
    ("timm:test_convnext", "image", {}, "stages", ["0", "1", "2", "3"]),
])
def test_blocks_follow_each_family_structure_and_only_the_last_n_train(name, modality, extra, parent, blocks):
    model = build_model(name, modality, **extra)
    assert freeze.find_blocks(model.backbone) == (parent, blocks)
    info = freeze.apply(model, False, 2)
    assert info["blocks"] == len(blocks)
    last = {f"backbone.{parent}.{b}." if parent else f"backbone.{b}." for b in blocks[-2:]}
    earlier = {f"backbone.{parent}.{b}." if parent else f"backbone.{b}." for b in blocks[:-2]}
    for k, p in model.named_parameters():
        if k.startswith(tuple(last)) or k.startswith("head."):
            assert p.requires_grad, k
        elif k.startswith(tuple(earlier)):
            assert not p.requires_grad, k
    stem = next(k for k, _ in model.named_parameters())  # the first parameter: stem or patch embedding
    assert not dict(model.named_parameters())[stem].requires_grad
    model.train()
    assert all(not m.training for m in model.frozen_modules)
    assert model.head.training and model.get_submodule(sorted(last)[0][:-1]).training


def test_a_frozen_backbone_keeps_its_batchnorm_statistics_in_train_mode():
    model = build_model("timm:" + TINY, "image")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freeze.apply(model, True, 0)
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [p for p in model.parameters() if p.requires_grad] == list(model.head.parameters())


def test_no_blocks_or_too_many_is_one_error():
    from torch import nn
    from pipeline.models import Detector
    flat = Detector(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(4, 1), "plain",
                    "image")  # like timm's inception_v3: named layers, no block container
    with pytest.raises(ModelError, match=r"^--unfreeze-last: plain has no blocks dfp can count .*--freeze-backbone"):
        freeze.apply(flat, False, 1)
    with pytest.raises(ModelError, match=r"--unfreeze-last 5: resnet18 has only 4 blocks; give at most 4"):
        freeze.apply(build_model("resnet18", "image"), False, 5)


@pytest.mark.parametrize("args,message", [
    (["--cache-embeddings"], "--cache-embeddings needs a frozen backbone: add --freeze-backbone"),
    (["--freeze-backbone", "--cache-embeddings", "--unfreeze-last", "1"], "--unfreeze-last 1 trains part of it"),
    (["--cache-views", "2"], "--cache-views 2: views of cached embeddings; add --cache-embeddings"),
    (["--unfreeze-last", "-1"], "--unfreeze-last must be at least 0"),
])
def test_probe_options_that_do_not_fit_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    from pipeline import cli
    (tmp_path / "s").mkdir()
    monkeypatch.setattr(sys, "argv", ["dfp", "train", str(tmp_path / "s"), "--out", str(tmp_path / "o"), *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    with pytest.raises(UsageError):
        from pipeline import validate
        validate.probe(False, 0, True, 0)


def test_a_cache_for_another_key_or_index_is_refused_with_the_reason(tmp_path):
    class Index:
        keys = np.array([b"a", b"b"])
        labels = np.array([0, 1], np.int8)

        def __len__(self):
            return 2
    e = embcache.Embeddings(torch.randn(1, 2, 3), np.array([True, True]), np.array([0, 1]))
    key = {"format": embcache.FORMAT, "weights": "w1", "shards": "s1", "precision": "fp32"}
    path = tmp_path / "train.pt"
    embcache.save(path, key, Index(), e)
    got, _ = embcache.load(path, key, Index())
    assert torch.equal(got.emb, e.emb)
    got, why = embcache.load(path, {**key, "weights": "w2", "precision": "torch.bfloat16"}, Index())
    assert got is None and why == f"{path} was computed with different precision, weights: recomputing"
    other = Index()
    other.keys = np.array([b"a", b"c"])
    assert embcache.load(path, key, other)[1] == f"{path} does not hold this split's samples: recomputing"
    path.write_bytes(path.read_bytes()[:50])
    assert embcache.load(path, key, Index())[1].startswith(f"{path} does not load (")


def test_cached_training_batches_are_the_image_loaders_plan(tmp_path):
    """Same sampler, same keys batch by batch (per-class resampling weights applied), on each of two ranks."""
    from pipeline.loaders import LoaderOptions, make_loader
    from pipeline.sampling import EpochSampler
    shards = tiny_shards(tmp_path, "image")
    for rank in (0, 1):
        real = make_loader(shards, "train", "torch", "cpu", LoaderOptions(batch_size=4, image_size=32, workers=0,
                                                                          sampling="inverse", seed=3), rank, 2)
        idx = real.index
        data = embcache.Embeddings(torch.arange(len(idx), dtype=torch.float32).view(1, -1, 1), np.ones(len(idx), bool),
                                   np.asarray(idx.labels, np.int64))
        cached = embcache.CachedLoader(data, idx, "cpu", 4, rank, 2, EpochSampler(idx.labels, "inverse", len(idx), 3,
                                                                                  rank, 2, 4), seed=3)
        for epoch in (0, 1):
            real.set_epoch(epoch, 1)
            cached.set_epoch(epoch, 1)
            got = [(k, x.ravel().long().tolist(), y.tolist()) for x, y, k in cached]
            want = [(k, y.tolist()) for _, y, k in real]
            assert [(k, y) for k, _, y in got] == want and len(got) == len(real.sampler) - 1
            assert all(idx.key(i) == k for keys, rows, _ in got for k, i in zip(keys, rows))


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_frozen_backbone_is_the_weights_file_bit_for_bit(probes):
    for run in ("plain", "cached"):
        for name in ("best_model.pth", "last.pth"):
            m = _model(probes[run], name)
            assert {k[len("backbone."):] for k in m if k.startswith("backbone.")} == set(probes["sd"])
            for k, v in probes["sd"].items():  # BatchNorm running statistics and counters included
                assert torch.equal(m["backbone." + k], v), (run, name, k)
        last = torch.load(probes[run] / "last.pth", weights_only=True)
        assert [len(g["params"]) for g in last["optimizer"]["param_groups"]] == [2]  # head weight and bias only
        config = json.loads((probes[run] / "config.json").read_text())
        assert config["freeze"]["backbone"] == "frozen" and config["freeze"]["trainable_parameters"] == \
            timm.create_model(TINY, num_classes=0).num_features + 1


@pytest.mark.slow
def test_the_cached_probe_trains_the_same_head_as_the_uncached_one(probes):
    """Augmentation off, same seed: the same plan, the same inputs, the same head. On this CPU the two heads are
    bit for bit equal; the tolerance, 1e-5 absolute, is for devices where a convolution's result depends on the
    batch it runs in (cuDNN picks algorithms by shape): the uncached run embeds each training batch as drawn, the
    cache embeds the split in evaluation batches, so the embeddings may differ in their last bits (about 1e-7
    relative in fp32), which two epochs of AdamW carry into the head at about that size. 1e-5 is 100x that and
    far below one update (lr 3e-4)."""
    a, b = _model(probes["plain"], "last.pth"), _model(probes["cached"], "last.pth")
    for k in ("head.weight", "head.bias"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    steps = [s["step"] for s in torch.load(probes["cached"] / "last.pth", weights_only=True)["optimizer"]["state"].values()]
    assert steps and all(int(s) == 8 for s in steps)  # 2 epochs of 4 batches: the head did train
    rows = lambda run, split: {r["key"]: float(r["score"]) for r in csv.DictReader(open(run / f"predictions_{split}.csv"))}
    for split in ("val", "test"):
        pa, pb = rows(probes["plain"], split), rows(probes["cached"], split)
        assert pa.keys() == pb.keys() and max(abs(pa[k] - pb[k]) for k in pa) < 1e-5
    ha = list(csv.DictReader(open(probes["plain"] / "history.csv")))
    hb = list(csv.DictReader(open(probes["cached"] / "history.csv")))
    assert [float(r["train_loss"]) for r in ha] == pytest.approx([float(r["train_loss"]) for r in hb], abs=1e-5)
    files = sorted(p.name for p in (probes["cached"] / "embeddings").iterdir())
    assert files == ["test.pt", "train.pt", "val.pt"] and not (probes["plain"] / "embeddings").exists()


@pytest.mark.slow
def test_the_checkpoint_of_a_cached_probe_scores_images_alone(probes):
    """best_model.pth holds the whole model: scoring the test split's images with it gives the run's scores."""
    from pipeline import checkpoint
    from pipeline.engine import predict
    from pipeline.loaders import LoaderOptions, make_loader
    ckpt = checkpoint.load(probes["cached"] / "best_model.pth")
    model = checkpoint.model_from_checkpoint(ckpt, torch.device("cpu"))
    pre = ckpt["preprocess"]
    loader = make_loader(probes["shards"], "test", "torch", "cpu", LoaderOptions(
        train=False, batch_size=3, image_size=pre["image_size"], workers=0, mean=tuple(pre["mean"]),
        std=tuple(pre["std"]), interpolation=pre["interpolation"]))
    keys, _, scores, _ = predict(model, loader, torch.device("cpu"), None)
    run = {r["key"]: float(r["score"]) for r in csv.DictReader(open(probes["cached"] / "predictions_test.csv"))}
    assert set(keys) == set(run) and max(abs(run[k] - s) for k, s in zip(keys, scores)) < 1e-5
    from pipeline.predict import predict_files
    image_tree(probes["root"] / "raw", 2, 2)
    predict_files(probes["cached"] / "best_model.pth", [probes["root"] / "raw"], probes["root"] / "p.csv", device="cpu",
                  workers=0)
    assert len([r for r in csv.DictReader(open(probes["root"] / "p.csv")) if r["score"]]) == 4


@pytest.mark.slow
def test_resume_reuses_the_cache_and_recomputes_a_foreign_split(probes, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_training(_probe_config(probes["shards"], out, probes["weights"], cache_embeddings=True, epochs=1), log=QUIET)
    val = out / "embeddings" / "val.pt"
    foreign = torch.load(val, weights_only=True)
    foreign["key"]["weights"] = "0" * 64  # as if copied from a run over other weights
    foreign["emb"] += 1
    torch.save(foreign, val)
    calls, real = [], embcache.extract
    monkeypatch.setattr(embcache, "extract", lambda embed, loader, *a: calls.append(loader.index.split) or
                        real(embed, loader, *a))
    lines = []
    run_training(_probe_config(probes["shards"], out, probes["weights"], cache_embeddings=True, resume=str(out),
                               epochs=2), log=lines.append, given={"resume", "epochs"})
    assert calls == ["val"]
    assert f"embeddings: {val} was computed with different weights: recomputing" in lines
    assert any(line.startswith("embeddings: train from ") for line in lines)
    assert torch.load(val, weights_only=True)["key"]["weights"] != "0" * 64
    a, b = _model(out, "last.pth"), _model(probes["cached"], "last.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the interrupted run is the uninterrupted one


@pytest.mark.slow
def test_unfreeze_last_changes_only_the_last_blocks_and_the_head(probes, tmp_path):
    out = run_training(tiny_config(probes["shards"], tmp_path / "run", model="timm:" + TINY, lr=1e-2,
                                   weights=str(probes["weights"]), unfreeze_last=1, report=False), log=QUIET)
    m = _model(out, "last.pth")
    changed = {k for k, v in probes["sd"].items() if not torch.equal(m["backbone." + k], v)}
    assert changed and all(k.startswith("layer4.") for k in changed)
    assert any(k.endswith("running_mean") for k in changed)  # the trained block is in train mode


@pytest.mark.slow
def test_cached_views_and_smote_under_two_gloo_ranks(probes, tmp_path):
    """torchrun, 2 CPU ranks: each embeds its share of 2 augmented views; SMOTE balances the cached rows."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
            str(REPO / "scripts" / "train.py"), str(probes["shards"]), "--out", str(out), "--epochs", "1",
            "--batch-size", "3", "--image-size", "32", "--model", "timm:" + TINY, "--weights", str(probes["weights"]),
            "--backend", "torch", "--workers", "0", "--device", "cpu", "--quiet", "--no-report", "--freeze-backbone",
            "--cache-embeddings", "--cache-views", "2", "--smote"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "weights_identical": True}
    train = torch.load(out / "embeddings" / "train.pt", weights_only=True)
    n = sum(config["dataset"]["splits"]["train"].values())
    assert train["emb"].shape[:2] == (2, n) and bool(train["present"].all())
    assert not torch.equal(train["emb"][0], train["emb"][1])  # two augmented views, not one twice
    assert config["smote"]["train_before"]["real"] + config["smote"]["train_before"]["fake"] == 2 * n
    m = _model(out, "best_model.pth")
    assert all(torch.equal(m["backbone." + k], v) for k, v in probes["sd"].items())
    preds = list(csv.DictReader(open(out / "predictions_val.csv")))
    assert len(preds) == len({p["key"] for p in preds}) == sum(config["dataset"]["splits"]["val"].values())
    shutil.rmtree(out)


@pytest.mark.slow
def test_a_cached_probe_under_bf16_keys_its_cache_by_precision(probes, tmp_path):
    """AMP: the embeddings are computed under autocast and kept as float32, keyed by the precision (a cache
    of another precision is recomputed: test_a_cache_for_another_key_or_index_is_refused_with_the_reason)."""
    out, lines = tmp_path / "run", []
    run_training(_probe_config(probes["shards"], out, probes["weights"], cache_embeddings=True, amp="bf16",
                               epochs=1), log=lines.append)
    bf16 = torch.load(out / "embeddings" / "val.pt", weights_only=True)
    fp32 = torch.load(probes["cached"] / "embeddings" / "val.pt", weights_only=True)
    assert bf16["key"]["precision"] == "torch.bfloat16" and fp32["key"]["precision"] == "fp32"
    assert bf16["emb"].dtype == torch.float32 and not torch.equal(bf16["emb"], fp32["emb"])
    torch.testing.assert_close(bf16["emb"], fp32["emb"], rtol=0.05, atol=0.05)  # bf16 keeps ~3 significant digits
    assert any(line.startswith("precision: torch.bfloat16") for line in lines)
    assert json.loads((out / "config.json").read_text())["precision"] == "torch.bfloat16"
