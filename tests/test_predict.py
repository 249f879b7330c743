"""`dfp predict` scores raw files exactly as `dfp evaluate` scores the same files packed in shards."""
import csv
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from factory import audio_tree, dfp_in_process, image_tree, smooth_image, video_tree, write_jpeg
from pipeline import checkpoint
from pipeline.evaluate import eval_options, evaluate
from pipeline.formats import CLASSES, read_manifest
from pipeline.loaders import make_loader
from pipeline.models import build_model
from pipeline.predict import predict_files
from pipeline.shards import ShardParams, build_shards
from pipeline.train import TrainConfig, _preprocess

TOL = 1e-4
MODELS = {"image": "resnet18", "audio": "audio_resnet18", "video": "frame_pool"}
TREES = {"image": lambda p: image_tree(p, 18, 9), "audio": audio_tree, "video": video_tree}


def untrained_checkpoint(shards: Path, path: Path, backend: str) -> Path:
    """A checkpoint as `dfp train` writes it, with seeded random weights: no training time.

    Batch-norm statistics come from one pass over the train split; with the initial ones (mean 0,
    variance 1) log-mel inputs in decibels drive every audio score to exactly 0."""
    manifest = read_manifest(shards)
    modality = manifest["modality"]
    cfg = TrainConfig(shards=str(shards), model=MODELS[modality], backend=backend, frame_backbone="resnet18",
                      image_size=32, audio_seconds=0.5)
    torch.manual_seed(0)
    net = build_model(cfg.model, modality, frame_backbone=cfg.frame_backbone)
    state = {"config": asdict(cfg), "modality": modality, "classes": list(CLASSES),
             "preprocess": _preprocess(cfg, manifest), "threshold": {"method": "f1", "value": 0.5}}
    _calibrate_batch_norm(net, make_loader(shards, "train", backend, "cpu", eval_options(state, 8, workers=0)))
    checkpoint.save(path, {**state, "model": net.state_dict()})
    return path


def _calibrate_batch_norm(net: torch.nn.Module, loader) -> None:
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the pass
    net.train()
    with torch.no_grad():
        for x, _, _ in loader:
            net(x)
    net.eval()


@pytest.fixture(scope="module", params=["image", "audio", "video"])
def dataset(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    TREES[request.param](root / "in")
    build_shards(root / "in", root / "shards", ShardParams(frames=3, split="0.4,0.2,0.4"), workers=1, progress=False)
    return root


def evaluated(root: Path, ckpt: Path, out: Path) -> dict[str, float]:
    """source -> score from `dfp evaluate` on the test split, with the checkpoint's backend."""
    evaluate(ckpt, root / "shards", "test", out, device="cpu", backend="auto", log=lambda *a: None)
    return {r["source"]: float(r["score"]) for r in csv.DictReader(open(out / "predictions_test.csv"))}


def predicted(root: Path, ckpt: Path, out: Path, chunk: int) -> tuple[dict[str, dict], dict]:
    """input-relative path -> CSV row from `dfp predict` on the whole raw folder, with the checkpoint's backend."""
    res = predict_files(ckpt, [root / "in"], out, device="cpu", backend="auto", workers=0, chunk=chunk,
                        log=lambda *a: None)
    rows = {Path(r["path"]).relative_to(root / "in").as_posix(): r for r in csv.DictReader(open(out))}
    return rows, res


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_predict_scores_equal_evaluate_scores(dataset, backend, tmp_path):
    ckpt = untrained_checkpoint(dataset / "shards", tmp_path / "model.pth", backend)
    ev = evaluated(dataset, ckpt, tmp_path / "ev")
    rows, res = predicted(dataset, ckpt, tmp_path / "preds.csv", chunk=4)  # several chunks
    assert res["backend"] == backend
    assert len(ev) >= 3 and np.ptp(list(ev.values())) > 100 * TOL  # the comparison below is not vacuous
    diff = [abs(float(rows[src]["score"]) - s) for src, s in ev.items()]
    print(f"{dataset.name} {backend}: max |predict - evaluate| = {max(diff):.3g} over {len(diff)} files")
    assert max(diff) <= TOL
    for r in rows.values():
        if r["score"]:
            assert r["score"] == repr(float(r["score"])) and r["label"] == ("fake" if float(r["score"]) >= 0.5 else "real")


def test_the_backends_score_differently_so_the_match_is_no_accident(tmp_path_factory, tmp_path):
    root = tmp_path_factory.mktemp("img2")
    image_tree(root / "in", 9, 6)
    build_shards(root / "in", root / "shards", ShardParams(split="0.4,0.2,0.4"), workers=1, progress=False)
    scores = {}
    for backend in ("dali", "torch"):
        ckpt = untrained_checkpoint(root / "shards", tmp_path / f"{backend}.pth", backend)
        scores[backend], _ = predicted(root, ckpt, tmp_path / f"{backend}.csv", chunk=256)
    diff = [abs(float(scores["dali"][k]["score"]) - float(scores["torch"][k]["score"])) for k in scores["dali"]]
    print(f"max |dali - torch| = {max(diff):.3g}")
    assert max(diff) > TOL


@pytest.mark.slow
def test_unpreparable_and_undecodable_files_get_error_rows(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_jpeg(raw / f"ok{i}.jpg", smooth_image(rng, 40, 30))
    (raw / "broken.jpg").write_bytes(b"\xff\xd8 nope")  # fails preparation
    tail = write_jpeg(raw / "tail.jpg", smooth_image(rng, 40, 30))
    tail.write_bytes(tail.read_bytes() + b"junk after the end")  # prepares (bytes kept) and decodes everywhere
    image_tree(tmp_path / "in", 6, 4)
    build_shards(tmp_path / "in", tmp_path / "shards", ShardParams(), workers=1, progress=False)
    ckpt = untrained_checkpoint(tmp_path / "shards", tmp_path / "model.pth", "dali")
    code, _, err = dfp_in_process(["predict", ckpt, raw, "--out", tmp_path / "p.csv", "--device", "cpu", "--workers",
                                   "0", "--backend", "dali"], monkeypatch, capsys)
    assert code == 0, err
    rows = {Path(x["path"]).name: x for x in csv.DictReader(open(tmp_path / "p.csv"))}
    assert list(rows) == ["broken.jpg", "ok0.jpg", "ok1.jpg", "ok2.jpg", "tail.jpg"]
    assert rows["broken.jpg"]["error"].startswith("not media") and not rows["broken.jpg"]["score"]
    assert all(rows[f"{n}.jpg"]["score"] and not rows[f"{n}.jpg"]["error"] for n in ("ok0", "ok1", "ok2", "tail"))


def test_folders_are_walked_like_dfp_shard_walks_input(tmp_path):
    """Linked files and folders are scored; what cannot be a file gets its reason as the row's error."""
    import os
    from pipeline.predict import collect_files
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for name in ("d/a.jpg", "d/sub/b.jpg", "elsewhere/c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", tmp_path / "d" / "linked")
    os.symlink(tmp_path / "elsewhere" / "c.jpg", tmp_path / "d" / "c_link.jpg")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "d" / "dangling.jpg")
    got = [(p.relative_to(tmp_path).as_posix(), why.split(":")[0]) for p, why in collect_files([tmp_path / "d"])]
    assert got == [("d/a.jpg", ""), ("d/c_link.jpg", ""), ("d/dangling.jpg", "dangling link"),
                   ("d/linked/c.jpg", ""), ("d/sub/b.jpg", "")]
