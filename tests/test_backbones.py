"""timm backbones (`--model timm:NAME`): weights from the library's own files, the model's input preparation in both
loaders and in the checkpoint, one-line failures offline and for unknown names. Tiny random-weight models: nothing
is downloaded (the subprocesses run offline, behind a dead proxy, with empty caches)."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from factory import image_tree
from pipeline import checkpoint, cli
from pipeline.errors import ModelError, UsageError
from pipeline.models import build_model, embed_and_head

timm = pytest.importorskip("timm")
REPO = Path(__file__).resolve().parents[1]
TINY = "test_resnet"  # 0.4 M parameters, any input size; its pretrained config: mean = std = 0.5, bilinear


def _timm_file(tmp_path: Path, fmt: str, arch: str = TINY) -> tuple[Path, dict]:
    """A timm state dict in timm's own layout, 1000-class classifier included, as the hub's files hold it."""
    torch.manual_seed(1)
    sd = timm.create_model(arch, pretrained=False).state_dict()
    path = tmp_path / f"{arch}.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path, sd


def _offline_env(tmp_path: Path) -> dict:
    dead = "http://127.0.0.1:9"
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
            "TORCH_HOME": str(tmp_path / "torch"), "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead,
            "https_proxy": dead, "NO_PROXY": "", "no_proxy": ""}


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "bin"])
def test_weights_file_in_timms_layout_loads_bit_for_bit(tmp_path, fmt):
    path, sd = _timm_file(tmp_path, fmt)
    model = build_model("timm:" + TINY, "image", weights_file=path)
    got = model.backbone.state_dict()
    classifier = {k for k in sd if k.startswith("fc.")}
    assert classifier and set(got) == set(sd) - classifier
    assert all(torch.equal(got[k], sd[k]) for k in got)
    video = build_model("frame_pool", "video", weights_file=path, frame_backbone="timm:" + TINY)
    assert all(torch.equal(v, sd[k]) for k, v in video.backbone.frame.state_dict().items())


def test_embeddings_are_timms_pooled_features_and_feed_the_one_logit_head():
    model = build_model("timm:" + TINY, "image").eval()
    x = torch.randn(2, 3, 32, 32)
    embed, head = embed_and_head(model)
    with torch.no_grad():
        e = embed(x)
        ref = model.backbone.forward_head(model.backbone.forward_features(x), pre_logits=True)
        assert e.shape == (2, model.backbone.num_features) and torch.equal(e, ref)
        assert torch.equal(head(e).squeeze(-1), model(x)) and model(x).shape == (2,)


def test_a_fixed_size_vit_is_built_for_the_run_image_size():
    assert timm.models.get_pretrained_cfg("test_vit").fixed_input_size
    vit = build_model("timm:test_vit", "image", image_size=32).eval()
    assert tuple(vit.backbone.patch_embed.img_size) == (32, 32)
    assert tuple(build_model("timm:test_vit", "image").backbone.patch_embed.img_size) == (160, 160)
    with torch.no_grad():
        assert vit(torch.randn(2, 3, 32, 32)).shape == (2,)


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    path, sd = _timm_file(tmp_path, "safetensors", "test_efficientnet")
    with pytest.raises(ModelError) as e:
        build_model("timm:" + TINY, "image", weights_file=path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "missing keys (e.g. " in msg and "unexpected keys (e.g. " in msg
    own = set(build_model("timm:" + TINY, "image").backbone.state_dict())
    assert sorted(set(sd) - own - {"classifier.weight", "classifier.bias"})[0] in msg  # named, not just counted
    assert sorted(own - set(sd))[0] in msg


def test_typo_is_rejected_with_close_matches():
    with pytest.raises(UsageError, match=r"--model timm:resnet10: timm has no model 'resnet10'; did you mean .*timm:resnet10t"):
        from pipeline import validate
        validate.model_name("timm:resnet10")
    with pytest.raises(UsageError, match="no pretrained tag 'c3_in1' for resnet10t; .*c3_in1k"):
        validate.model_name("timm:resnet10t.c3_in1")
    validate.model_name("timm:resnet10t.c3_in1k")
    validate.model_name("timm:" + TINY, ("image",), "frame_backbone")


def test_typo_on_the_command_line_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    image_tree(tmp_path / "in", 3, 2)
    from pipeline.shards import ShardParams, build_shards
    build_shards(tmp_path / "in", tmp_path / "s", ShardParams(split="0.5,0.5,0"), workers=1, progress=False)
    monkeypatch.setattr(sys, "argv", ["dfp", "train", str(tmp_path / "s"), "--out", str(tmp_path / "o"),
                                      "--model", "timm:convnext_tnyi"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "did you mean timm:convnext_tiny" in err, err
    assert not (tmp_path / "o").exists()


def test_the_model_decides_the_input_size_unless_image_size_is_given(tmp_path):
    from dataclasses import replace
    from pipeline.formats import read_manifest
    from pipeline.train import TrainConfig, _decide, _preprocess
    image_tree(tmp_path / "in", 3, 2)
    from pipeline.shards import ShardParams, build_shards
    build_shards(tmp_path / "in", tmp_path / "s", ShardParams(split="0.6,0.4,0"), workers=1, progress=False)
    manifest = read_manifest(tmp_path / "s")
    cfg = TrainConfig(shards=str(tmp_path / "s"), model="timm:" + TINY, backend="torch")
    pretrained = timm.models.get_pretrained_cfg(TINY)
    own, _, _ = _decide(cfg, manifest, {"model"}, "cpu")
    assert own.image_size == pretrained.input_size[-1] != 224
    pre = _preprocess(own, manifest)
    assert pre["mean"] == list(pretrained.mean) and pre["std"] == list(pretrained.std)
    assert pre["interpolation"] == pretrained.interpolation
    mine, _, _ = _decide(replace(cfg, image_size=48), manifest, {"model", "image_size"}, "cpu")
    assert mine.image_size == 48
    resumed, _, _ = _decide(replace(cfg, image_size=48), manifest, set(), "cpu", {})  # a saved run's size stays
    assert resumed.image_size == 48
    tv, _, _ = _decide(replace(cfg, model="resnet18"), manifest, {"model"}, "cpu")
    assert tv.image_size == 224 and _preprocess(tv, manifest)["mean"] == [0.485, 0.456, 0.406]


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_both_loaders_normalise_with_the_given_mean_and_std(tmp_path, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    from pipeline.loaders import LoaderOptions, make_loader
    from pipeline.shards import ShardParams, build_shards
    image_tree(tmp_path / "in", 3, 2)
    build_shards(tmp_path / "in", tmp_path / "s", ShardParams(split="0.6,0.4,0"), workers=1, progress=False)
    stats = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
    out = {}
    for name, (mean, std) in stats.items():
        opts = LoaderOptions(batch_size=8, train=False, image_size=32, workers=0, mean=mean, std=std)
        x = torch.cat([b[0] for b in make_loader(tmp_path / "s", "train", backend, "cpu", opts)])
        out[name] = x, x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    assert (out["imagenet"][0] - out["half"][0]).abs().max() > 0.1
    assert torch.allclose(out["imagenet"][1], out["half"][1], atol=1e-5)  # the same pixels, normalised two ways
    opts = LoaderOptions(batch_size=8, train=False, image_size=32, workers=0, interpolation="bicubic")
    cubic = torch.cat([b[0] for b in make_loader(tmp_path / "s", "train", backend, "cpu", opts)])
    assert (cubic - out["imagenet"][0]).abs().mean() > 1e-3  # the resize follows the model's interpolation


@pytest.mark.slow
def test_pretrained_offline_without_cache_exits_2_with_one_line(tmp_path):
    image_tree(tmp_path / "in", 3, 2)
    from pipeline.shards import ShardParams, build_shards
    build_shards(tmp_path / "in", tmp_path / "s", ShardParams(split="0.6,0.4,0"), workers=1, progress=False)
    for model, needle in (("timm:" + TINY, "could not fetch timm weights for timm:test_resnet"),
                          ("resnet18", "could not fetch torchvision weights for resnet18")):
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", str(tmp_path / "s"), "--out",
                            str(tmp_path / "o"), "--model", model, "--pretrained", "--device", "cpu",
                            "--image-size", "32", "--epochs", "1", "--backend", "torch"],
                           env=_offline_env(tmp_path), capture_output=True, text=True, cwd=tmp_path, timeout=300)
        lines = r.stderr.splitlines()
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0] and "--weights FILE" in lines[0], r.stderr
    assert not any(p.is_file() for p in (tmp_path / "hf").rglob("*")) if (tmp_path / "hf").exists() else True
    assert not any(p.is_file() for p in (tmp_path / "torch").rglob("*")) if (tmp_path / "torch").exists() else True


@pytest.mark.slow
def test_pretrained_offline_uses_the_hub_cache(tmp_path):
    """The Hugging Face cache layout (refs/main -> snapshots/REV/model.safetensors) holds the tag's weights."""
    tag = timm.models.get_pretrained_cfg(TINY).hf_hub_id  # timm/test_resnet.r160_in1k
    rev = "0" * 40
    repo = tmp_path / "hf" / "hub" / ("models--" + tag.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    (repo / "snapshots" / rev).mkdir(parents=True)
    _, sd = _timm_file(repo / "snapshots" / rev, "safetensors")
    (repo / "snapshots" / rev / f"{TINY}.safetensors").rename(repo / "snapshots" / rev / "model.safetensors")
    torch.save(sd, tmp_path / "expected.pth")
    code = ("import sys, torch\nfrom pipeline.models import build_model\n"
            f"m = build_model('timm:{TINY}', 'image', pretrained=True)\n"
            f"sd = torch.load(sys.argv[1])\ngot = m.backbone.state_dict()\n"
            "assert got and all(torch.equal(v, sd[k]) for k, v in got.items())\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "expected.pth")], env=_offline_env(tmp_path),
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr


@pytest.mark.slow
def test_train_predict_evaluate_with_a_timm_model(tmp_path, monkeypatch, capsys):
    from pipeline.evaluate import evaluate
    from pipeline.predict import predict_files
    from pipeline.shards import ShardParams, build_shards
    image_tree(tmp_path / "in", 12, 8)
    build_shards(tmp_path / "in", tmp_path / "s", ShardParams(split="0.4,0.2,0.4"), workers=1, progress=False)
    weights, sd = _timm_file(tmp_path, "safetensors")
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["dfp", "train", str(tmp_path / "s"), "--out", str(run), "--model",
                                      "timm:" + TINY, "--weights", str(weights), "--image-size", "32", "--epochs", "1",
                                      "--batch-size", "8", "--device", "cpu", "--backend", "torch", "--workers", "0",
                                      "--no-report"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 0, capsys.readouterr().err
    ckpt = checkpoint.load(run / "best_model.pth")
    pretrained = timm.models.get_pretrained_cfg(TINY)
    pre = ckpt["preprocess"]
    assert pre["image_size"] == 32 and pre["mean"] == list(pretrained.mean) and pre["std"] == list(pretrained.std)
    assert pre["interpolation"] == pretrained.interpolation
    trained = {r["source"]: float(r["score"]) for r in csv.DictReader(open(run / "predictions_test.csv"))}
    evaluate(run / "best_model.pth", tmp_path / "s", "test", tmp_path / "ev", device="cpu", log=lambda *a: None)
    ev = {r["source"]: float(r["score"]) for r in csv.DictReader(open(tmp_path / "ev" / "predictions_test.csv"))}
    predict_files(run / "best_model.pth", [tmp_path / "in"], tmp_path / "p.csv", device="cpu", workers=0,
                  log=lambda *a: None)
    pr = {Path(r["path"]).relative_to(tmp_path / "in").as_posix(): float(r["score"])
          for r in csv.DictReader(open(tmp_path / "p.csv"))}
    assert len(ev) >= 4 and np.ptp(list(ev.values())) > 1e-3  # the comparisons below are not vacuous
    assert max(abs(ev[k] - trained[k]) for k in ev) <= 1e-4  # evaluate prepares as training did (mean/std 0.5)
    assert max(abs(pr[k] - ev[k]) for k in ev) <= 1e-4
