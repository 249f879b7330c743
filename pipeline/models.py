"""Image / audio / video backbones from torchvision and timm with a one-logit head (fake = positive, logit > 0 ~ fake).

Every model is a ``Detector``: ``backbone`` maps an input batch to an embedding (B, D) (the torchvision network with
its final Linear removed; a timm model built with ``num_classes=0``, i.e. its features after timm's own pooling),
``head`` is ``nn.Linear(D, 1)``, and ``forward`` returns logits of shape (B,).
State-dict keys are therefore ``backbone.<torchvision or timm key>`` and ``head.weight`` / ``head.bias``.

Inputs:
  image  (B, 3, H, W)                   efficientnet_b0, efficientnet_b4, resnet18, resnet50, mobilenet_v3_large,
                                        timm:NAME (any timm model, see backbones.py)
  audio  (B, 1, n_mels, T) log-mel      audio_resnet18: ResNet-18 whose first conv takes 1 channel
         (B, samples) 16 kHz waveform   wav2vec2_base, wav2vec2_xlsr_300m, hubert_base, wavlm_base, ... (see
                                        backbones.SSL_BUNDLES): torchaudio's SSL network, a learned softmax-weighted
                                        sum of its layers, mean over time (ssl.py; keys backbone.ssl.<torchaudio
                                        key>, backbone.mix.weight)
  video  (B, T, 3, H, W)                frame_pool: a 2D image backbone per frame, mean over time;
                                        r2plus1d_18: torchvision's (2+1)D ResNet (permutes to (B, 3, T, H, W) inside)
All work with ``channels_last`` (4-D) / ``channels_last_3d`` (r2plus1d_18) memory formats.

Weights: ``pretrained=True`` loads torchvision's default weights (ImageNet; Kinetics-400 for r2plus1d_18; for
audio_resnet18 the ImageNet ResNet-18 with its first conv summed over RGB), or for timm the tag's weights through
timm's hub (the Hugging Face cache is used offline). ``weights_file`` (``.safetensors``, else read with
``torch.load(weights_only=True)``) may hold: a dfp model state dict, a dfp checkpoint (a dict with ``"model"``),
or a plain torchvision / timm state dict of the underlying network (e.g. a downloaded ``resnet18-f37072fd.pth`` or
a timm ``model.safetensors``; its classifier, of any number of classes, is ignored), the offline replacement for
``--pretrained``. ``module.`` (DDP) and
``_orig_mod.`` (torch.compile) key prefixes are accepted. The SSL front-ends take their weights through torchaudio's
bundles (``pretrained``) or a torchaudio, Hugging Face or fairseq file (ssl.py); their architecture travels in the
checkpoint (``model_config``).
"""
from __future__ import annotations

from typing import Callable
from urllib.error import URLError

import torch
import torchvision
from torch import nn

from .errors import ModelError
from .weights import held_download_notice, load_file, load_strict, state_dict_in

from .backbones import (AUDIO_MODELS, DEFAULT_MODEL, IMAGE_MODELS, MODELS, VIDEO_MODELS, is_ssl, is_timm,  # noqa: F401
                        takes)

# torchvision attribute path of the final Linear of each underlying network
_FINAL = {"efficientnet_b0": "classifier.1", "efficientnet_b4": "classifier.1", "resnet18": "fc", "resnet50": "fc",
          "mobilenet_v3_large": "classifier.3", "r2plus1d_18": "fc"}


class FramePool(nn.Module):
    """(B, T, C, H, W) -> 2D backbone on every frame -> mean over T -> (B, D)."""

    def __init__(self, frame: nn.Module):
        super().__init__()
        self.frame = frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"frame_pool expects (B, T, C, H, W), got {tuple(x.shape)}")
        b, t = x.shape[:2]
        emb = self.frame(x.reshape(b * t, *x.shape[2:]))
        return emb.reshape(b, t, -1).mean(dim=1)


class Video3D(nn.Module):
    """(B, T, C, H, W) -> torchvision video network, which takes (B, C, T, H, W) -> (B, D)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"r2plus1d_18 expects (B, T, C, H, W), got {tuple(x.shape)}")
        return self.net(x.permute(0, 2, 1, 3, 4))


class Detector(nn.Module):
    """``head(backbone(x))`` squeezed to (B,) logits."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, name: str, modality: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.name = name
        self.modality = modality
        self.frozen_modules: list[nn.Module] = []  # set by pipeline.freeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).squeeze(-1)

    def train(self, mode: bool = True) -> "Detector":
        super().train(mode)
        for m in self.frozen_modules:  # frozen parts keep their BatchNorm statistics and no dropout
            m.eval()
        return self

    def extra_repr(self) -> str:
        return f"name={self.name}, modality={self.modality}"


def _arch(name: str, frame_backbone: str) -> str:
    """The torchvision network a dfp model is built from."""
    return {"audio_resnet18": "resnet18", "frame_pool": frame_backbone}.get(name, name)


def _check(name: str, modality: str, frame_backbone: str) -> None:
    if modality not in MODELS:
        raise ModelError(f"unknown modality {modality!r}; choose one of: {', '.join(MODELS)}")
    owner = next((m for m in MODELS if takes(name, m)), None)
    if owner is None:
        raise ModelError(f"unknown model {name!r}; {modality} models: {', '.join(MODELS[modality])}")
    if owner != modality:
        raise ModelError(f"model {name!r} is for {owner}, not {modality}; {modality} models: "
                         f"{', '.join(MODELS[modality])}")
    if name == "frame_pool" and not takes(frame_backbone, "image"):
        raise ModelError(f"unknown frame backbone {frame_backbone!r}; choose one of: {', '.join(IMAGE_MODELS)} "
                         f"or timm:NAME")


def _torchvision_net(name: str, arch: str, pretrained: bool) -> nn.Module:
    if not pretrained:
        return torchvision.models.get_model(arch, weights=None)
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        with held_download_notice():
            return torchvision.models.get_model(arch, weights=weights)
    except (URLError, OSError, RuntimeError) as e:
        label = name if name == arch else f"{name} ({arch})"
        raise ModelError(f"--pretrained: could not fetch torchvision weights for {label} (offline?); run once "
                         f"online to fill the torch hub cache (TORCH_HOME), or use --weights FILE or drop "
                         f"--pretrained") from None


def _network(name: str, arch: str, pretrained: bool, image_size: int | None) -> tuple[nn.Module, int, tuple[str, ...]]:
    """The underlying network without its classifier, its embedding size, and the classifier's key prefixes in
    the library's own state dicts."""
    if is_timm(arch):
        from .backbones import timm_backbone
        return timm_backbone(arch, pretrained, image_size)
    net = _torchvision_net(name, arch, pretrained)
    final = _FINAL[arch]
    dim = _get(net, final).in_features
    _set(net, final, nn.Identity())
    return net, dim, (final + ".",)


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _set(module: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, last = path.rpartition(".")
    owner = _get(module, parent) if parent else module
    if last.isdigit():
        owner[int(last)] = new
    else:
        setattr(owner, last, new)


def _read_weights(path: str) -> tuple[dict, bool]:
    """State dict from a file, and whether it is a dfp Detector's (else a plain torchvision / timm network's)."""
    try:
        obj = load_file(path)
    except FileNotFoundError:
        raise ModelError(f"--weights {path}: file not found") from None
    except Exception as e:  # unpickling refusal, truncated file, not a torch file ...
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"--weights {path}: not a readable weights file ({first})") from None
    sd = state_dict_in(obj, path)
    is_dfp = all(k.startswith(("backbone.", "head.")) for k in sd)
    return sd, is_dfp


def build_model(name: str, modality: str, pretrained: bool = False, weights_file: str | None = None,
                frame_backbone: str = "efficientnet_b0", image_size: int | None = None,
                config: dict | None = None) -> Detector:
    """A ``Detector`` with (B,) logits; see the module docstring for inputs and weights. Raises ModelError.
    image_size: the input side, for timm models built for one size (most ViTs); others take any size.
    config: a recorded architecture (``model_config``, the SSL front-ends'), as a checkpoint holds it."""
    _check(name, modality, frame_backbone)
    if is_ssl(name):
        from .ssl import ssl_backbone
        backbone, dfp_sd = ssl_backbone(name, pretrained, weights_file, config)
        model = Detector(backbone, nn.Linear(backbone.dim, 1), name, modality)
        if dfp_sd is not None:
            load_strict(model, dfp_sd, str(weights_file), name)
        return model
    arch = _arch(name, frame_backbone)
    sd, is_dfp = _read_weights(str(weights_file)) if weights_file else (None, False)
    net, dim, classifier = _network(name, arch, pretrained, image_size)
    if sd is not None and not is_dfp:
        # a plain torchvision / timm state dict of `arch`; its classifier (any number of classes) is not used
        load_strict(net, sd, str(weights_file), name, ignore=classifier)
    if name == "audio_resnet18":
        old = net.conv1
        net.conv1 = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        with torch.no_grad():   # a gray image replicated over RGB gives the same response
            net.conv1.weight.copy_(old.weight.sum(dim=1, keepdim=True))
    backbone = {"frame_pool": FramePool, "r2plus1d_18": Video3D}.get(name, lambda m: m)(net)
    model = Detector(backbone, nn.Linear(dim, 1), name, modality)
    if sd is not None and is_dfp:
        load_strict(model, sd, str(weights_file), name)
    return model


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        if hasattr(model, "_orig_mod"):       # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def model_config(model: nn.Module) -> dict | None:
    """The architecture a checkpoint records so ``build_model(..., config=)`` rebuilds it (SSL front-ends; None for
    the others, which their name fixes)."""
    return getattr(_unwrap(model).backbone, "arch", None)


def embed_and_head(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear]:
    """For SMOTE on embeddings: ``(embed, head)`` with ``embed(x) -> (B, D)`` and ``head: nn.Linear(D, 1)``;
    ``head(embed(x)).squeeze(-1) == model(x)``. Accepts DDP- or torch.compile-wrapped models."""
    inner = _unwrap(model)
    if not isinstance(inner, Detector):
        raise ModelError(f"embed_and_head needs a model from build_model, got {type(inner).__name__}")
    return inner.backbone, inner.head
