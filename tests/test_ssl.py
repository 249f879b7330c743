"""Speech SSL front-ends (torchaudio's wav2vec2 family) on raw waveforms: weights from torchaudio's, Hugging Face's
and fairseq's layouts, the layer-weighted pooling head, waveforms from both loaders, train / resume / predict, and
the offline --pretrained failure. A tiny random wav2vec2 configuration throughout: nothing is downloaded (the
subprocesses run behind a dead proxy with an empty torch hub cache)."""
import argparse
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from factory import tone
from pipeline import checkpoint
from pipeline.errors import ModelError
from pipeline.models import build_model, embed_and_head, model_config

torchaudio = pytest.importorskip("torchaudio")
REPO = Path(__file__).resolve().parents[1]
# 0.1 M parameters; the convolutions' strides (5*2*2*2) give one frame per 40 samples
TINY = {"extractor_mode": "group_norm", "extractor_conv_layer_config": [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 2, 2]],
        "extractor_conv_bias": False, "encoder_embed_dim": 32, "encoder_projection_dropout": 0.0,
        "encoder_pos_conv_kernel": 8, "encoder_pos_conv_groups": 4, "encoder_num_layers": 3, "encoder_num_heads": 2,
        "encoder_attention_dropout": 0.0, "encoder_ff_interm_features": 64, "encoder_ff_interm_dropout": 0.0,
        "encoder_dropout": 0.0, "encoder_layer_norm_first": False, "encoder_layer_drop": 0.0}


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny networks gain nothing from a second intra-op thread, and on a busy machine its synchronisation made
    a forward pass 20x slower (0.9 s against 0.04 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_net(seed: int = 1):
    torch.manual_seed(seed)
    params = dict(TINY, extractor_conv_layer_config=[tuple(c) for c in TINY["extractor_conv_layer_config"]])
    return torchaudio.models.wav2vec2_model(**params, aux_num_out=None).eval()


def _torchaudio_file(folder: Path, fmt: str = "pth") -> tuple[Path, dict]:
    """A tiny network's state dict in torchaudio's layout, with its factory arguments in config.json beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = _tiny_net().state_dict()
    path = folder / f"tiny.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    (folder / "config.json").write_text(json.dumps(TINY))
    return path, sd


def _offline_env(tmp_path: Path) -> dict:
    dead = "http://127.0.0.1:9"
    return {**os.environ, "PYTHONPATH": str(REPO), "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(tmp_path / "hf"), "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead,
            "https_proxy": dead, "NO_PROXY": "", "no_proxy": ""}


def speech_tree(root: Path, n: int = 6) -> Path:
    """n real and n fake 16 kHz clips of 0.5 s; the fakes carry broadband noise."""
    rng = np.random.default_rng(0)
    for cls in ("real", "fake"):
        for i in range(n):
            x = tone(16000, 0.5, freq=180 + 40 * i)
            if cls == "fake":
                x = x + 0.05 * rng.standard_normal(len(x)).astype(np.float32)
            (root / cls).mkdir(parents=True, exist_ok=True)
            sf.write(root / cls / f"{cls}{i}.wav", x, 16000)
    return root


@pytest.fixture(scope="module")
def speech_shards(tmp_path_factory):
    from pipeline.shards import ShardParams, build_shards
    root = tmp_path_factory.mktemp("speech")
    speech_tree(root / "in")
    build_shards(root / "in", root / "s", ShardParams(split="0.5,0.25,0.25"), workers=1, progress=False)
    return root


# ---------------------------------------------------------------- weights
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_a_torchaudio_file_loads_bit_for_bit_with_the_architecture_beside_it(tmp_path, fmt):
    path, sd = _torchaudio_file(tmp_path, fmt)
    model = build_model("wav2vec2_base", "audio", weights_file=path)
    got = model.backbone.ssl.state_dict()
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    cfg = model_config(model)
    assert cfg["type"] == "Wav2Vec2" and cfg["params"] == TINY and cfg["normalize_waveform"] is False
    rebuilt = build_model("wav2vec2_base", "audio", config=cfg)  # what predict does from the checkpoint
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_the_embedding_is_the_time_mean_of_the_softmax_weighted_layers(tmp_path):
    path, _ = _torchaudio_file(tmp_path)
    model = build_model("hubert_base", "audio", weights_file=path).eval()
    x = torch.from_numpy(np.stack([tone(16000, 0.25, freq=f) for f in (200, 300)]))
    with torch.no_grad():
        model.backbone.mix.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
        layers, _ = model.backbone.ssl.extract_features(x)
        layers[-1] = model.backbone.ssl.encoder.transformer.layer_norm(layers[-1])  # the model's output
        assert torch.allclose(layers[-1], model.backbone.ssl(x)[0], atol=1e-5)
        w = torch.softmax(torch.tensor([2.0, -1.0, 0.5]), 0)
        ref = sum(wi * h for wi, h in zip(w, layers)).mean(dim=1)
        embed, head = embed_and_head(model)
        e = embed(x)
        assert e.shape == (2, 32) and torch.allclose(e, ref, atol=1e-5)
        assert torch.equal(head(e).squeeze(-1), model(x)) and model(x).shape == (2,)
        assert torch.allclose(embed(x.unsqueeze(1)), e)  # (B, 1, samples) is taken too
        model.backbone.mix.weight.zero_()
        assert not torch.allclose(embed(x), e, atol=1e-4)  # the mix is learned, not fixed
    model.train()
    model(x).sum().backward()
    assert model.backbone.mix.weight.grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused  # DDP without find_unused_parameters needs every one


def test_a_wavlm_configuration_with_layer_norm_first_builds_and_runs(tmp_path):
    params = dict(TINY, encoder_layer_norm_first=True, extractor_mode="layer_norm", encoder_num_buckets=8,
                  encoder_max_distance=16)
    (tmp_path / "config.json").write_text(json.dumps({"type": "WavLM", "params": params}))
    torch.manual_seed(0)
    net = torchaudio.models.wavlm_model(**dict(params, extractor_conv_layer_config=[
        tuple(c) for c in params["extractor_conv_layer_config"]]), aux_num_out=None)
    torch.save(net.state_dict(), tmp_path / "wavlm.pth")
    model = build_model("wavlm_base", "audio", weights_file=tmp_path / "wavlm.pth")
    cfg = model_config(model)
    assert cfg["type"] == "WavLM" and cfg["normalize_waveform"] is True and cfg["params"]["encoder_num_buckets"] == 8
    x = torch.from_numpy(np.stack([tone(16000, 0.25, freq=f) for f in (200, 300)]))
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def _hf_state(sd: dict, prefix: str = "wav2vec2.") -> dict:
    """torchaudio keys -> Hugging Face Wav2Vec2ForCTC's (old-style weight norm), plus parts that are not the
    front-end (CTC head, masked embedding)."""
    out = {}
    for k, v in _split_in_proj(sd).items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                              "weight_v")
        if k.startswith("encoder.feature_projection."):
            k = k[len("encoder."):]
        elif k.startswith("encoder.transformer."):
            k = "encoder." + k[len("encoder.transformer."):]
        out[prefix + k] = v
    out[prefix + "masked_spec_embed"] = torch.zeros(32)
    out["lm_head.weight"], out["lm_head.bias"] = torch.zeros(5, 32), torch.zeros(5)
    return out


def _split_in_proj(sd: dict) -> dict:
    """WavLM's fused attention projection (torch's MultiheadAttention) as Hugging Face's q/k/v/out projections."""
    out = {}
    for k, v in sd.items():
        head, sep, last = k.partition(".attention.attention.")
        if not sep:
            out[k] = v
        elif last.startswith("in_proj_"):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3)):
                out[f"{head}.attention.{name}.{last[len('in_proj_'):]}"] = part
        else:
            out[f"{head}.attention.{last}"] = v
    return out


HF_CONFIG = {"model_type": "wav2vec2", "feat_extract_norm": "group", "conv_dim": [16, 16, 16, 16],
             "conv_kernel": [10, 3, 3, 2], "conv_stride": [5, 2, 2, 2], "conv_bias": False, "hidden_size": 32,
             "feat_proj_dropout": 0.0, "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 4,
             "num_hidden_layers": 3, "num_attention_heads": 2, "attention_dropout": 0.0, "intermediate_size": 64,
             "activation_dropout": 0.0, "hidden_dropout": 0.0, "do_stable_layer_norm": False, "layerdrop": 0.0}


def test_a_hugging_face_folder_loads_without_transformers(tmp_path):
    from safetensors.torch import save_file
    sd = _tiny_net().state_dict()
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file(_hf_state(sd), str(hf / "model.safetensors"))
    (hf / "config.json").write_text(json.dumps(HF_CONFIG))
    (hf / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    model = build_model("wav2vec2_base", "audio", weights_file=hf)
    got = model.backbone.ssl.state_dict()
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert model_config(model)["params"] == TINY and model_config(model)["normalize_waveform"] is True
    (hf / "config.json").unlink()
    with pytest.raises(ModelError) as e:  # the named model's architecture, which the tiny weights do not fit
        build_model("wav2vec2_base", "audio", weights_file=hf)
    assert "\n" not in str(e.value) and "does not fit model wav2vec2_base" in str(e.value)


FAIRSEQ_PREFIXES = {"encoder.feature_projection.projection.": "post_extract_proj.",
                    "encoder.feature_projection.layer_norm.": "layer_norm.",
                    "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
                    "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v",
                    "encoder.transformer.pos_conv_embed.conv.": "encoder.pos_conv.0.",
                    "encoder.transformer.layer_norm.": "encoder.layer_norm."}


def test_a_hugging_face_wavlm_file_with_its_config_beside_loads(tmp_path):
    params = dict(TINY, encoder_num_buckets=8, encoder_max_distance=16)
    torch.manual_seed(2)
    sd = torchaudio.models.wavlm_model(**dict(params, extractor_conv_layer_config=[
        tuple(c) for c in params["extractor_conv_layer_config"]]), aux_num_out=None).state_dict()
    torch.save(_hf_state(sd, "wavlm."), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(dict(HF_CONFIG, model_type="wavlm", num_buckets=8,
                                                          max_bucket_distance=16)))
    model = build_model("wavlm_base", "audio", weights_file=tmp_path / "pytorch_model.bin")
    got = model.backbone.ssl.state_dict()
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert model_config(model)["type"] == "WavLM" and model_config(model)["params"] == params


def _fairseq_key(k: str) -> str:
    """A torchaudio key as fairseq's Wav2Vec2Model names it (the reverse of torchaudio's import_fairseq mapping)."""
    m = re.match(r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(\w+)$", k)
    if m:
        return f"feature_extractor.conv_layers.{m[1]}.{0 if m[2] == 'conv' else 2}.{m[3]}"
    for a, b in FAIRSEQ_PREFIXES.items():
        if k.startswith(a):
            return b + k[len(a):]
    i, rest = re.match(r"encoder\.transformer\.layers\.(\d+)\.(.+)$", k).groups()
    for a, b in (("attention.", "self_attn."), ("layer_norm.", "self_attn_layer_norm."),
                 ("feed_forward.intermediate_dense.", "fc1."), ("feed_forward.output_dense.", "fc2.")):
        if rest.startswith(a):
            rest = b + rest[len(a):]
    return f"encoder.layers.{i}.{rest}"


def _fairseq_state(sd: dict) -> dict:
    """fairseq's key layout, plus the pretraining parts fairseq saves (masked embedding, projections)."""
    out = {_fairseq_key(k): v for k, v in sd.items()}
    out["mask_emb"], out["final_proj.weight"] = torch.zeros(32), torch.zeros(8, 32)
    return out


@pytest.mark.parametrize("style", ["args", "cfg"])
def test_a_fairseq_checkpoint_with_plain_config_loads(tmp_path, style):
    """fairseq's argparse args, or its hydra config saved as plain dicts (model and task sections)."""
    sd = _tiny_net().state_dict()
    args = argparse.Namespace(extractor_mode="default", conv_feature_layers="[(16, 10, 5)] + [(16, 3, 2)] * 2 + [(16, 2, 2)]",
                              conv_bias=False, encoder_embed_dim=32, conv_pos=8, conv_pos_groups=4, encoder_layers=3,
                              encoder_attention_heads=2, encoder_ffn_embed_dim=64, layer_norm_first=False, dropout=0.0,
                              attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0, encoder_layerdrop=0.0,
                              normalize=style == "cfg")
    config = {"args": args} if style == "args" else \
        {"args": None, "cfg": {"model": {k: v for k, v in vars(args).items() if k != "normalize"},
                               "task": {"normalize": True}}}
    torch.save({**config, "model": _fairseq_state(sd)}, tmp_path / "fairseq.pt")
    model = build_model("wav2vec2_base", "audio", weights_file=tmp_path / "fairseq.pt")
    got = model.backbone.ssl.state_dict()
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert model_config(model)["params"] == TINY and model_config(model)["normalize_waveform"] is (style == "cfg")


class Opaque:  # stands in for an omegaconf config: a class only unpickling code could rebuild
    pass


def test_a_checkpoint_that_pickles_code_is_refused_in_one_line(tmp_path):
    torch.save({"cfg": Opaque(), "model": {"post_extract_proj.weight": torch.zeros(2, 2)}}, tmp_path / "hydra.pt")
    with pytest.raises(ModelError) as e:
        build_model("wav2vec2_base", "audio", weights_file=tmp_path / "hydra.pt")
    msg = str(e.value)
    assert "\n" not in msg and "hydra.pt" in msg and "does not unpickle" in msg and "import_fairseq_model" in msg


def test_a_file_of_another_network_is_refused_in_one_line(tmp_path):
    torch.save(torchaudio.models.ConvTasNet(num_sources=2, enc_num_feats=8, msk_num_feats=8, msk_num_hidden_feats=8,
                                            msk_num_layers=1, msk_num_stacks=1).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ModelError, match=r"holds no wav2vec2-family weights .*keys such as"):
        build_model("wav2vec2_base", "audio", weights_file=tmp_path / "other.pth")


def test_unfreeze_last_counts_transformer_layers_and_trains_the_mix(tmp_path):
    from pipeline import freeze
    path, _ = _torchaudio_file(tmp_path)
    model = build_model("wav2vec2_base", "audio", weights_file=path)
    info = freeze.apply(model, False, 1)
    assert info["blocks"] == 3  # the tiny network's transformer layers
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "backbone.mix.weight" in trains and {"head.weight", "head.bias"} <= trains
    assert any(n.startswith("backbone.ssl.encoder.transformer.layers.2.") for n in trains)
    assert not any(n.startswith(("backbone.ssl.encoder.transformer.layers.1.", "backbone.ssl.feature_extractor."))
                   for n in trains)
    whole = build_model("wav2vec2_base", "audio", weights_file=path)
    freeze.apply(whole, True, 0)
    assert {n for n, p in whole.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}


# ---------------------------------------------------------------- loaders
@pytest.mark.parametrize("train", [False, True])
def test_both_backends_deliver_the_same_waveforms_to_ssl_models(speech_shards, train):
    pytest.importorskip("nvidia.dali")
    from pipeline.loaders import LoaderOptions, make_loader
    got = {}
    for backend in ("torch", "dali"):
        o = LoaderOptions(batch_size=4, workers=0, audio_seconds=0.4, train=train, audio_input="waveform")
        got[backend] = next(iter(make_loader(speech_shards / "s", "train", backend, "cpu", o)))
        x = got[backend][0]
        assert x.shape == (4, 6400) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert got["torch"][2] == got["dali"][2]  # the same samples
    if not train:  # evaluation: the same decoded, cropped samples (training draws its own crops and noise)
        assert torch.equal(got["torch"][0], got["dali"][0]) and got["torch"][0].abs().max() > 0.1
    mel = next(iter(make_loader(speech_shards / "s", "train", "torch", "cpu",
                                LoaderOptions(batch_size=4, workers=0, audio_seconds=0.4, train=train))))[0]
    assert mel.dim() == 4 and mel.shape[:2] == (4, 1)  # log-mel models keep theirs


# ---------------------------------------------------------------- end to end
def _train(shards, run, weights, backend, *extra):
    from pipeline import cli
    argv = ["dfp", "train", str(shards), "--out", str(run), "--model", "wav2vec2_base", "--weights", str(weights),
            "--audio-seconds", "0.4", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--backend", backend,
            "--workers", "0", "--no-report", "--quiet", "--strategy", "manual", "--loss", "bce", *extra]
    old = sys.argv
    sys.argv = argv
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main()
    finally:
        sys.argv = old
    return exc.value.code


def _scores(path: Path, key: str) -> dict[str, float]:
    return {r[key]: float(r["score"]) for r in csv.DictReader(open(path))}


@pytest.mark.slow
def test_a_wav2vec2_model_trains_resumes_and_predicts_on_audio(speech_shards, tmp_path, capsys):
    from pipeline.predict import predict_files
    weights, sd = _torchaudio_file(tmp_path / "w")
    run = tmp_path / "run"
    assert _train(speech_shards / "s", run, weights, "torch") == 0, capsys.readouterr().err
    ckpt = checkpoint.load(run / "best_model.pth")
    assert ckpt["preprocess"]["audio_input"] == "waveform" and ckpt["preprocess"]["audio_seconds"] == 0.4
    assert ckpt["preprocess"]["sample_rate"] == 16000 and ckpt["model_config"]["params"] == TINY
    moved = sum(not torch.equal(ckpt["model"]["backbone.ssl." + k], v) for k, v in sd.items())
    assert moved > 0  # the front-end is fine-tuned
    assert _train(speech_shards / "s", run, weights, "torch", "--resume", str(run), "--epochs", "2") == 0, \
        capsys.readouterr().err
    history = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in history] == [1, 2]
    trained = _scores(run / "predictions_test.csv", "source")
    predict_files(run / "best_model.pth", [speech_shards / "in"], tmp_path / "p.csv", device="cpu", workers=0,
                  backend="torch", log=lambda *a: None)
    pr = {Path(k).relative_to(speech_shards / "in").as_posix(): s for k, s in _scores(tmp_path / "p.csv", "path").items()}
    assert len(pr) == 12 and len(trained) >= 2 and np.ptp(list(pr.values())) > 0
    assert max(abs(pr[k] - trained[k]) for k in trained) <= 1e-4  # predict prepares raw files as training did


def test_a_frozen_wav2vec2_probe_on_cached_embeddings_keeps_the_file_bit_for_bit(speech_shards, tmp_path, capsys):
    from pipeline.predict import predict_files
    weights, sd = _torchaudio_file(tmp_path / "w")
    run = tmp_path / "run"
    assert _train(speech_shards / "s", run, weights, "torch", "--freeze-backbone", "--cache-embeddings") == 0, \
        capsys.readouterr().err
    ckpt = checkpoint.load(run / "best_model.pth")
    assert all(torch.equal(ckpt["model"]["backbone.ssl." + k], v) for k, v in sd.items())
    assert torch.equal(ckpt["model"]["backbone.mix.weight"], torch.zeros(3))
    assert (run / "embeddings" / "train.pt").is_file()
    trained = _scores(run / "predictions_test.csv", "source")
    predict_files(run / "best_model.pth", [speech_shards / "in"], tmp_path / "p.csv", device="cpu", workers=0,
                  backend="torch", log=lambda *a: None)
    pr = {Path(k).relative_to(speech_shards / "in").as_posix(): s for k, s in _scores(tmp_path / "p.csv", "path").items()}
    assert max(abs(pr[k] - trained[k]) for k in trained) <= 1e-4  # the cached scores are the model's own


def test_a_wav2vec2_model_trains_and_predicts_through_dali(speech_shards, tmp_path, capsys):
    pytest.importorskip("nvidia.dali")
    from pipeline.predict import predict_files
    weights, _ = _torchaudio_file(tmp_path / "w", "safetensors")
    run = tmp_path / "run"
    assert _train(speech_shards / "s", run, weights, "dali") == 0, capsys.readouterr().err
    trained = _scores(run / "predictions_test.csv", "source")
    res = predict_files(run / "best_model.pth", [speech_shards / "in"], tmp_path / "p.csv", device="cpu",
                        workers=0, log=lambda *a: None)
    assert res["backend"] == "dali" and res["errors"] == 0
    pr = {Path(k).relative_to(speech_shards / "in").as_posix(): s for k, s in _scores(tmp_path / "p.csv", "path").items()}
    assert max(abs(pr[k] - trained[k]) for k in trained) <= 1e-4


def test_pretrained_takes_the_bundle_weights_from_the_torch_hub_cache_offline(tmp_path, monkeypatch):
    """torchaudio's bundle mechanism (torch hub, TORCH_HOME/hub/checkpoints/FILE) with a tiny stand-in bundle."""
    import dataclasses
    from pipeline import ssl
    sd = _tiny_net(seed=3).state_dict()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(sd, cache / "dfp_tiny_test.pth")
    params = dict(TINY, extractor_conv_layer_config=[tuple(c) for c in TINY["extractor_conv_layer_config"]],
                  aux_num_out=None)
    tiny = dataclasses.replace(torchaudio.pipelines.HUBERT_BASE, _path="dfp_tiny_test.pth", _params=params)
    monkeypatch.setattr(ssl, "_bundle", lambda name: tiny)
    import urllib.request
    # urllib installs its opener, with the proxies of the moment (the dead one here), on first use and keeps it
    monkeypatch.setattr(urllib.request, "_opener", None)
    for k, v in _offline_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    got = build_model("hubert_base", "audio", pretrained=True).backbone.ssl.state_dict()
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    (cache / "dfp_tiny_test.pth").unlink()
    with pytest.raises(ModelError, match="could not fetch torchaudio weights for hubert_base"):
        build_model("hubert_base", "audio", pretrained=True)


@pytest.mark.slow
def test_pretrained_offline_without_cache_exits_2_with_one_line(speech_shards, tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", str(speech_shards / "s"), "--out",
                        str(tmp_path / "o"), "--model", "wav2vec2_xlsr_300m", "--pretrained", "--device", "cpu",
                        "--epochs", "1", "--backend", "torch", "--audio-seconds", "0.4"],
                       env=_offline_env(tmp_path), capture_output=True, text=True, cwd=tmp_path, timeout=120)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "could not fetch torchaudio weights for wav2vec2_xlsr_300m" in lines[0] and "--weights FILE" in lines[0]
    assert not r.stdout.count("Downloading")  # the held notice of a failed fetch is not shown
    hub = tmp_path / "torch"
    assert not hub.exists() or not any(p.is_file() for p in hub.rglob("*"))
