from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from pipeline.errors import ModelError
from pipeline.models import (AUDIO_MODELS, DEFAULT_MODEL, IMAGE_MODELS, VIDEO_MODELS, Detector, build_model,
                             embed_and_head)

torch.set_num_threads(1)


def forward(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_one_logit(name):
    torch.manual_seed(0)
    model = build_model(name, "image")
    assert isinstance(model, Detector) and model.head.out_features == 1
    out = forward(model, torch.randn(2, 3, 64, 64))
    assert out.shape == (2,) and torch.isfinite(out).all()


def test_audio_model():
    model = build_model("audio_resnet18", "audio")
    assert model.backbone.conv1.in_channels == 1
    assert forward(model, torch.randn(2, 1, 64, 100)).shape == (2,)


def test_video_models():
    fp = build_model("frame_pool", "video", frame_backbone="resnet18")
    assert forward(fp, torch.randn(2, 4, 3, 64, 64)).shape == (2,)
    default = build_model("frame_pool", "video")
    assert isinstance(default.backbone.frame, torchvision.models.EfficientNet)
    r21 = build_model("r2plus1d_18", "video")
    assert forward(r21, torch.randn(2, 4, 3, 32, 32)).shape == (2,)


def test_frame_pool_is_mean_of_frames():
    torch.manual_seed(0)
    model = build_model("frame_pool", "video", frame_backbone="resnet18").eval()
    x = torch.randn(2, 3, 3, 48, 48)
    embed, head = embed_and_head(model)
    with torch.no_grad():
        per_frame = torch.stack([model.backbone.frame(x[:, t]) for t in range(3)], 1).mean(1)
        torch.testing.assert_close(embed(x), per_frame, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,modality,shape", [("resnet18", "image", (2, 3, 64, 64)),
                                                 ("mobilenet_v3_large", "image", (2, 3, 64, 64)),
                                                 ("audio_resnet18", "audio", (2, 1, 64, 100)),
                                                 ("frame_pool", "video", (2, 2, 3, 64, 64))])
def test_embed_and_head_composition(name, modality, shape):
    torch.manual_seed(0)
    model = build_model(name, modality).eval()
    embed, head = embed_and_head(model)
    assert isinstance(head, nn.Linear) and head.out_features == 1
    x = torch.randn(*shape)
    with torch.no_grad():
        emb = embed(x)
        assert emb.dim() == 2 and emb.shape == (2, head.in_features)
        torch.testing.assert_close(head(emb).squeeze(-1), model(x))
    # wrapped models are unwrapped
    assert embed_and_head(nn.DataParallel(model))[1] is head
    with pytest.raises(ModelError):
        embed_and_head(nn.Linear(3, 1))


def test_channels_last():
    torch.manual_seed(0)
    model = build_model("efficientnet_b0", "image").eval()
    x = torch.randn(2, 3, 64, 64)
    ref = forward(model, x)
    model = model.to(memory_format=torch.channels_last)
    out = forward(model, x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # frame_pool with channels_last frame backbone and a permuted (non-contiguous) input
    fp = build_model("frame_pool", "video", frame_backbone="resnet18").eval().to(memory_format=torch.channels_last)
    v = torch.randn(2, 3, 3, 32, 32).permute(0, 1, 2, 4, 3)
    assert forward(fp, v).shape == (2,)


def test_model_errors():
    with pytest.raises(ModelError, match="unknown model 'vgg16'; image models: efficientnet_b0, ") as ei:
        build_model("vgg16", "image")
    assert "\n" not in str(ei.value)
    with pytest.raises(ModelError, match="'audio_resnet18' is for audio, not image"):
        build_model("audio_resnet18", "image")
    with pytest.raises(ModelError, match="is for image, not video"):
        build_model("resnet18", "video")
    with pytest.raises(ModelError, match="unknown modality"):
        build_model("resnet18", "text")
    with pytest.raises(ModelError, match="unknown frame backbone"):
        build_model("frame_pool", "video", frame_backbone="r2plus1d_18")
    assert DEFAULT_MODEL == {"image": "efficientnet_b0", "audio": "audio_resnet18", "video": "frame_pool"}
    assert set(DEFAULT_MODEL.values()) <= set(IMAGE_MODELS + AUDIO_MODELS + VIDEO_MODELS)


def test_weights_file_roundtrip_and_checkpoint(tmp_path):
    torch.manual_seed(1)
    model = build_model("resnet18", "image").eval()
    x = torch.randn(2, 3, 64, 64)
    ref = forward(model, x)
    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}, "threshold": 0.4,
                "config": {"model": "resnet18"}}, ckpt)
    for f in (plain, ckpt):
        torch.manual_seed(99)
        loaded = build_model("resnet18", "image", weights_file=str(f))
        torch.testing.assert_close(forward(loaded, x), ref)


def test_weights_file_torchvision_format(tmp_path):
    torch.manual_seed(2)
    tv = torchvision.models.resnet18(weights=None)
    f = tmp_path / "resnet18-imagenet.pth"
    torch.save(tv.state_dict(), f)
    model = build_model("resnet18", "image", weights_file=str(f))
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    audio = build_model("audio_resnet18", "audio", weights_file=str(f))
    torch.testing.assert_close(audio.backbone.conv1.weight, tv.conv1.weight.sum(1, keepdim=True))
    fp = build_model("frame_pool", "video", weights_file=str(f), frame_backbone="resnet18")
    torch.testing.assert_close(fp.backbone.frame.layer1[0].conv1.weight, tv.layer1[0].conv1.weight)


def test_weights_file_mismatch(tmp_path):
    f = tmp_path / "r18.pth"
    torch.save(build_model("resnet18", "image").state_dict(), f)
    with pytest.raises(ModelError, match=r"--weights .*r18\.pth: does not fit model efficientnet_b0") as ei:
        build_model("efficientnet_b0", "image", weights_file=str(f))
    assert "\n" not in str(ei.value)
    with pytest.raises(ModelError, match="does not fit model frame_pool"):   # torchvision resnet18 into b0 frames
        tv = tmp_path / "tv.pth"
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), tv)
        build_model("frame_pool", "video", weights_file=str(tv))
    # same keys, wrong shapes: a head with 2 outputs
    sd = build_model("resnet18", "image").state_dict()
    sd["head.weight"], sd["head.bias"] = torch.zeros(2, 512), torch.zeros(2)
    torch.save(sd, f)
    with pytest.raises(ModelError, match="size mismatch") as ei:
        build_model("resnet18", "image", weights_file=str(f))
    assert "\n" not in str(ei.value)
    with pytest.raises(ModelError, match="file not found"):
        build_model("resnet18", "image", weights_file=str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="not a readable weights file"):
        build_model("resnet18", "image", weights_file=str(junk))
    torch.save({"epoch": 3}, junk)
    with pytest.raises(ModelError, match="holds no state dict"):
        build_model("resnet18", "image", weights_file=str(junk))


@pytest.mark.parametrize("name,modality", [("resnet18", "image"), ("audio_resnet18", "audio"),
                                           ("frame_pool", "video")])
def test_pretrained_offline(monkeypatch, name, modality):
    def no_network(url, *a, **k):
        raise URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(ModelError, match=r"--pretrained: could not fetch torchvision weights for .*offline\?.*"
                                         r"use --weights FILE or drop --pretrained"):
        build_model(name, modality, pretrained=True)


def test_pretrained_loads_torchvision_weights(monkeypatch):
    torch.manual_seed(3)
    fake_imagenet = torchvision.models.resnet18(weights=None).state_dict()
    seen = []
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url",
                        lambda url, *a, **k: seen.append(url) or fake_imagenet)
    model = build_model("resnet18", "image", pretrained=True)
    assert seen and "resnet18" in seen[0]
    torch.testing.assert_close(model.backbone.conv1.weight, fake_imagenet["conv1.weight"])
    audio = build_model("audio_resnet18", "audio", pretrained=True)
    torch.testing.assert_close(audio.backbone.conv1.weight, fake_imagenet["conv1.weight"].sum(1, keepdim=True))
