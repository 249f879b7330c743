"""Speech SSL front-ends: torchaudio's wav2vec2 family (wav2vec 2.0, XLS-R, HuBERT, WavLM) on raw waveforms.

`SSLBackbone` runs the SSL network (torchaudio's `Wav2Vec2Model`) on (B, samples) 16 kHz waveforms, takes every
transformer layer's output (`extract_features`; the last one as the model's own output, after its final norm),
mixes them with softmax-normalised learned weights (one scalar per layer, as SUPERB and the SSL anti-spoofing
front-ends do; all zero at the start, i.e. the plain mean) and mean-pools the mix over time: the (B, D) embedding that the one-logit head and SMOTE read. The mixing weights are
part of the backbone (`backbone.mix.weight`): `--freeze-backbone` and cached embeddings keep them as loaded,
`--unfreeze-last N` trains them with the last N transformer layers.

Architecture, `arch`: {"type": "Wav2Vec2" | "WavLM", "params": torchaudio factory arguments
(`torchaudio.models.wav2vec2_model` / `wavlm_model`), "normalize_waveform": whether each clip is normalised to
zero mean and unit variance first}. A named model's is its torchaudio bundle's; a weights file's own
configuration (a `config.json` beside it, a fairseq checkpoint's args, a dfp checkpoint's record) replaces it.
The checkpoint records it (`"model_config"`), so predict rebuilds the same network without any file.

`--weights` takes, besides dfp's own files: a torchaudio state dict (`Wav2Vec2Model.state_dict()`, .pth or
.safetensors), a Hugging Face checkpoint (a folder with config.json and model.safetensors or pytorch_model.bin, or
such a file with config.json beside it; read without the transformers package) and a fairseq checkpoint (.pt)
whose config unpickles as plain values (argparse args or dicts; omegaconf configs do not). Keys are mapped to
torchaudio's as its import helpers (`torchaudio.models.wav2vec2.utils`) map them.
"""
from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import torch
from torch import nn

from .backbones import SSL_BUNDLES
from .errors import ModelError
from .weights import held_download_notice, load_file, load_strict, state_dict_in

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_PREFIXES = ("wav2vec2.", "hubert.", "wavlm.")
FACTORY_KEYS = ("extractor_mode", "extractor_conv_layer_config", "extractor_conv_bias", "encoder_embed_dim",
                "encoder_projection_dropout", "encoder_pos_conv_kernel", "encoder_pos_conv_groups",
                "encoder_num_layers", "encoder_num_heads", "encoder_attention_dropout", "encoder_ff_interm_features",
                "encoder_ff_interm_dropout", "encoder_dropout", "encoder_layer_norm_first", "encoder_layer_drop")
# fairseq's Wav2Vec2Config defaults, for the fields its args leave out
FAIRSEQ_DEFAULTS = {"extractor_mode": "default", "conv_bias": False, "encoder_embed_dim": 768, "conv_pos": 128,
                    "conv_pos_groups": 16, "encoder_layers": 12, "encoder_attention_heads": 12,
                    "encoder_ffn_embed_dim": 3072, "layer_norm_first": False, "dropout": 0.1,
                    "attention_dropout": 0.1, "activation_dropout": 0.0, "dropout_input": 0.0,
                    "encoder_layerdrop": 0.0,
                    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] + [(512, 2, 2)]"}


class LayerMix(nn.Module):
    """A list of L (B, T, D) layer outputs -> their sum weighted by softmax(weight), (B, T, D)."""

    def __init__(self, layers: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(layers))

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        w = torch.softmax(self.weight, dim=0).to(layers[0].dtype)
        return torch.einsum("l,lbtd->btd", w, torch.stack(layers))


class SSLBackbone(nn.Module):
    """(B, samples) or (B, 1, samples) waveform -> SSL layers -> softmax-weighted sum -> mean over time -> (B, D).
    The mix is a module after the network, so `--unfreeze-last N` (freeze.py) counts it among what follows the
    transformer layers and trains it."""

    def __init__(self, net: nn.Module, arch: dict):
        super().__init__()
        self.ssl = net
        self.mix = LayerMix(len(net.encoder.transformer.layers))
        self.arch = arch
        self.normalize_waveform = bool(arch["normalize_waveform"])
        self.dim = int(arch["params"]["encoder_embed_dim"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[1] == 1:
            x = x.squeeze(1)
        if x.dim() != 2:
            raise ValueError(f"an SSL front-end expects (B, samples) waveforms, got {tuple(x.shape)}")
        if self.normalize_waveform:  # per clip, as the models were pretrained
            x = nn.functional.layer_norm(x, x.shape[-1:])
        layers, _ = self.ssl.extract_features(x)
        tr = self.ssl.encoder.transformer
        if not tr.layer_norm_first:  # forward() ends with this norm, extract_features leaves it out: every
            layers[-1] = tr.layer_norm(layers[-1])  # parameter takes part (DDP), the last entry is the model's output
        return self.mix(layers).mean(dim=1)


def _bundle(name: str):
    import torchaudio.pipelines
    return getattr(torchaudio.pipelines, SSL_BUNDLES[name])


def _plain(params: dict) -> dict:
    """Factory arguments as plain values (lists for the conv layers), as checkpoints and JSON hold them."""
    out = {k: params[k] for k in FACTORY_KEYS}
    out["extractor_conv_layer_config"] = [[int(v) for v in c] for c in out["extractor_conv_layer_config"]]
    for k in ("encoder_num_buckets", "encoder_max_distance"):  # WavLM's relative positions
        if k in params:
            out[k] = int(params[k])
    return out


def named_arch(name: str) -> dict:
    b = _bundle(name)
    return {"type": b._model_type, "params": _plain(b._params), "normalize_waveform": bool(b._normalize_waveform)}


def make_network(arch: dict, label: str) -> nn.Module:
    from torchaudio.models import wav2vec2_model, wavlm_model
    factories = {"Wav2Vec2": wav2vec2_model, "WavLM": wavlm_model}
    if arch.get("type") not in factories:
        raise ModelError(f"{label}: unknown SSL model type {arch.get('type')!r}; expected Wav2Vec2 or WavLM")
    params = dict(arch["params"])
    params["extractor_conv_layer_config"] = [tuple(c) for c in params["extractor_conv_layer_config"]]
    try:
        return factories[arch["type"]](**params, aux_num_out=None)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ModelError(f"{label}: its SSL configuration does not build ({' '.join(str(e).split())[:200]})") from None


def ssl_backbone(name: str, pretrained: bool, weights_file, arch: dict | None = None):
    """(SSLBackbone, the dfp state dict to load into the whole Detector or None). `arch`: a recorded architecture
    (a checkpoint's), which takes precedence over the file's and the name's."""
    sd, file_arch, is_dfp = read_weights(weights_file) if weights_file else (None, None, False)
    arch = arch or file_arch or named_arch(name)
    label = f"--weights {weights_file}" if weights_file else name
    if pretrained and arch["params"] != named_arch(name)["params"]:
        raise ModelError(f"--pretrained: {label} describes another architecture than {name}'s torchaudio "
                         f"bundle; drop --pretrained (the file brings the weights)")
    fetched = pretrained_state(name) if pretrained else None  # before building: offline fails at once
    net = make_network(arch, label)
    if fetched is not None:
        _load_network(net, fetched, f"torchaudio's {name} weights", name)
    if sd is not None and not is_dfp:
        _load_network(net, sd, str(weights_file), name)
    return SSLBackbone(net, arch), (sd if is_dfp else None)


def _load_network(net: nn.Module, sd: dict, where: str, name: str) -> None:
    sd = {k: v for k, v in _weight_norm_keys(sd).items() if not k.startswith("aux.")}  # an ASR model's CTC head
    load_strict(net, sd, where, name)


def pretrained_state(name: str) -> dict:
    """The bundle's weights through torchaudio (torch hub's cache, TORCH_HOME, is used when it holds them)."""
    try:
        with held_download_notice():
            return _bundle(name)._get_state_dict(None)
    except (URLError, OSError, RuntimeError, ValueError) as e:
        raise ModelError(f"--pretrained: could not fetch torchaudio weights for {name} ({type(e).__name__}; "
                         f"offline?); run once online to fill the torch hub cache (TORCH_HOME), or give --weights "
                         f"FILE (a torchaudio, Hugging Face or fairseq checkpoint)") from None


def _weight_norm_keys(sd: dict) -> dict:
    """The positional convolution's weight norm as torch's parametrizations name it (files have weight_g/weight_v)."""
    rename = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
    out = {}
    for k, v in sd.items():
        head, _, last = k.rpartition(".")
        out[f"{head}.{rename[last]}" if "pos_conv_embed" in head and last in rename else k] = v
    return out


# ---------------------------------------------------------------- reading weights files
def read_weights(path) -> tuple[dict, dict | None, bool]:
    """(state dict in torchaudio's layout, or a dfp Detector's; the architecture the file brings, or None; whether
    it is dfp's). One-line ModelError for anything else."""
    p = Path(path)
    if p.is_dir():
        found = [p / n for n in HF_WEIGHTS if (p / n).is_file()]
        if not found:
            raise ModelError(f"--weights {path}: folder without {' or '.join(HF_WEIGHTS)} (a Hugging Face "
                             f"checkpoint folder holds one beside config.json)")
        p = found[0]
    obj = _load(p, path)
    if _is_fairseq(obj):
        return _from_fairseq(obj, path), _fairseq_arch(obj, path), False
    arch = obj.get("model_config") if isinstance(obj, dict) and isinstance(obj.get("model_config"), dict) else None
    sd = state_dict_in(obj, path)
    if all(k.startswith(("backbone.", "head.")) for k in sd):
        return sd, arch or _config_beside(p, path), True
    if any(k.startswith("encoder.transformer.") for k in sd):
        return sd, _config_beside(p, path), False
    if any(k.removeprefix(pre).startswith("feature_projection.") for k in sd for pre in HF_PREFIXES + ("",)):
        arch = _config_beside(p, path)
        return _from_hf(sd, arch), arch, False
    if any(k.startswith(("post_extract_proj.", "encoder.pos_conv.", "w2v_encoder.")) for k in sd):
        return _from_fairseq({"model": sd}, path), _config_beside(p, path), False
    raise ModelError(f"--weights {path}: holds no wav2vec2-family weights in torchaudio's, Hugging Face's or "
                     f"fairseq's layout (keys such as {', '.join(sorted(sd)[:2])})")


def _load(p: Path, shown) -> object:
    """The file's object; fairseq's argparse args are allowed, nothing else that is not tensors and plain values."""
    if not p.is_file():
        raise ModelError(f"--weights {shown}: file not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return load_file(str(p))
    except Exception as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise ModelError(f"--weights {shown}: it pickles objects dfp does not unpickle ({first}); for a fairseq "
                             f"checkpoint with an omegaconf config, convert it with torchaudio's "
                             f"import_fairseq_model and save model.state_dict() as .pth") from None
        raise ModelError(f"--weights {shown}: not a readable weights file ({first})") from None


def _config_beside(p: Path, shown) -> dict | None:
    """The architecture in config.json beside the weights: Hugging Face's (hidden_size, conv_dim, ...), torchaudio's
    factory arguments, or dfp's record of them; None where there is none (the named model's applies)."""
    cfg_path = p.parent / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"--weights {shown}: {cfg_path} is not readable JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"--weights {shown}: {cfg_path} holds no configuration object")
    if "hidden_size" in cfg:
        return _hf_arch(cfg, p.parent, shown)
    params = cfg.get("params", cfg)
    missing = [k for k in FACTORY_KEYS if k not in params]
    if missing:
        raise ModelError(f"--weights {shown}: {cfg_path} is neither a Hugging Face config nor torchaudio's "
                         f"wav2vec2_model arguments (lacks {', '.join(missing[:3])})")
    norm = cfg.get("normalize_waveform", params["extractor_mode"] == "layer_norm")
    return {"type": cfg.get("type", "Wav2Vec2"), "params": _plain(params), "normalize_waveform": bool(norm)}


def _hf_arch(cfg: dict, folder: Path, shown) -> dict:
    from torchaudio.models.wav2vec2.utils.import_huggingface import _get_config, _get_config_wavlm
    wavlm = cfg.get("model_type") == "wavlm"
    try:
        params = (_get_config_wavlm if wavlm else _get_config)(SimpleNamespace(**cfg))
    except AttributeError as e:
        raise ModelError(f"--weights {shown}: its config.json lacks a field torchaudio reads ({e})") from None
    norm = params["extractor_mode"] == "layer_norm"
    pre = folder / "preprocessor_config.json"  # the feature extractor's own setting, where the checkpoint has it
    if pre.is_file():
        try:
            norm = bool(json.loads(pre.read_text()).get("do_normalize", norm))
        except (OSError, ValueError, AttributeError):
            pass
    return {"type": "WavLM" if wavlm else "Wav2Vec2", "params": _plain(params), "normalize_waveform": norm}


def _from_hf(sd: dict, arch: dict | None) -> dict:
    """Hugging Face keys -> torchaudio's, as `import_huggingface_model` loads the modules; heads and pretraining
    parts (lm_head, quantizer, project_q, masked_spec_embed, ...) are not part of the front-end."""
    from torchaudio.models.wav2vec2.utils.import_huggingface import transform_wavlm_encoder_state
    out, enc = {}, {}
    for k, v in sd.items():
        for pre in HF_PREFIXES:
            k = k.removeprefix(pre)
        if k.startswith("feature_extractor."):
            out[k] = v
        elif k.startswith("feature_projection."):
            out["encoder." + k] = v
        elif k.startswith("encoder."):
            enc[k[len("encoder."):]] = v
    if arch is not None and arch["type"] == "WavLM":
        try:
            transform_wavlm_encoder_state(enc, arch["params"]["encoder_num_layers"])
        except KeyError as e:
            raise ModelError(f"a WavLM checkpoint lacks {e}") from None
    out.update({"encoder.transformer." + k: v for k, v in enc.items()})
    return out


def _is_fairseq(obj) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and ("args" in obj or "cfg" in obj) \
        and obj.get("format") is None


def _from_fairseq(obj: dict, shown) -> dict:
    from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict
    sd = {k.removeprefix("w2v_encoder."): v for k, v in obj["model"].items()}
    try:
        out = _convert_state_dict(sd)
    except ValueError as e:
        raise ModelError(f"--weights {shown}: not a fairseq wav2vec2 / HuBERT checkpoint ({e})") from None
    return {k: v for k, v in out.items() if k != "label_embs_concat"}  # HuBERT's pretraining targets


def _as_dict(x) -> dict | None:
    if x is None:
        return None
    return dict(vars(x)) if isinstance(x, argparse.Namespace) else (dict(x) if isinstance(x, dict) else None)


def _fairseq_arch(obj: dict, shown) -> dict | None:
    args, hydra = _as_dict(obj.get("args")), _as_dict(obj.get("cfg")) or {}
    cfg, task = (args, args) if args else (_as_dict(hydra.get("model")), _as_dict(hydra.get("task")) or {})
    if cfg is None:
        return None
    inner = _as_dict(cfg.get("w2v_args"))
    if inner is not None:  # a fine-tuned model: its encoder's pretraining configuration
        task = _as_dict(inner.get("task")) or inner
        cfg = _as_dict(inner.get("model")) or inner
    c = {**FAIRSEQ_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    params = {"extractor_mode": "layer_norm" if c["extractor_mode"] == "layer_norm" else "group_norm",
              "extractor_conv_layer_config": _conv_layers(c["conv_feature_layers"], shown),
              "extractor_conv_bias": bool(c["conv_bias"]), "encoder_embed_dim": int(c["encoder_embed_dim"]),
              "encoder_projection_dropout": float(c["dropout_input"]), "encoder_pos_conv_kernel": int(c["conv_pos"]),
              "encoder_pos_conv_groups": int(c["conv_pos_groups"]), "encoder_num_layers": int(c["encoder_layers"]),
              "encoder_num_heads": int(c["encoder_attention_heads"]),
              "encoder_attention_dropout": float(c["attention_dropout"]),
              "encoder_ff_interm_features": int(c["encoder_ffn_embed_dim"]),
              "encoder_ff_interm_dropout": float(c["activation_dropout"]), "encoder_dropout": float(c["dropout"]),
              "encoder_layer_norm_first": bool(c["layer_norm_first"]),
              "encoder_layer_drop": float(c["encoder_layerdrop"])}
    norm = (task or {}).get("normalize", params["extractor_mode"] == "layer_norm")
    return {"type": "Wav2Vec2", "params": params, "normalize_waveform": bool(norm)}


def _conv_layers(text, shown) -> list[list[int]]:
    """fairseq's conv_feature_layers, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4", read without eval: lists,
    tuples, integers, + and * only."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(ast.dump(node)[:80])
    try:
        layers = ev(ast.parse(str(text), mode="eval")) if isinstance(text, str) else list(text)
        return [[int(v) for v in layer] for layer in layers if len(layer) == 3]
    except (ValueError, SyntaxError, TypeError) as e:
        raise ModelError(f"--weights {shown}: unreadable conv_feature_layers {str(text)[:80]!r} ({e})") from None
