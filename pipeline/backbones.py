"""Which backbones dfp can build, by name, and the factories for those from other libraries (timm).

Importing this module imports neither torch nor timm: the names below are what the command line checks before
anything heavy loads. `timm:NAME` is any model timm's registry knows (`timm.list_models()`), with or without a
pretrained tag (`timm:tf_efficientnet_b4.ns_jft_in1k`); it takes images, and is a frame backbone for video.
Its input size, mean/std and interpolation come from the model's pretrained configuration (`input_config`).
The speech SSL names (`SSL_BUNDLES`: torchaudio's wav2vec2 family) take raw waveforms, the other audio models
log-mel spectrograms (`audio_input`); their networks are built in `ssl.py`.
"""
from __future__ import annotations

import difflib

from .errors import ModelError
from .names import AUDIO_MODELS, DEFAULT_MODEL, IMAGE_MODELS, SSL_MODELS, VIDEO_MODELS  # noqa: F401

# speech SSL front-ends: dfp name -> torchaudio.pipelines bundle (architecture, weights URL, sample rate)
SSL_BUNDLES = {name: name.upper() for name in SSL_MODELS}
SSL_SAMPLE_RATE = 16000  # every bundle above was pretrained on 16 kHz audio
MODELS = {"image": IMAGE_MODELS, "audio": AUDIO_MODELS, "video": VIDEO_MODELS}
TIMM = "timm:"

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def is_timm(name: str | None) -> bool:
    return bool(name) and name.startswith(TIMM)


def is_ssl(name: str | None) -> bool:
    return name in SSL_BUNDLES


def audio_input(name: str | None) -> str:
    """What an audio model takes: "waveform" (the SSL front-ends, which learn their own features) or "logmel"."""
    return "waveform" if is_ssl(name) else "logmel"


def takes(name: str, modality: str) -> bool:
    """Whether `name` is a model for `modality` (timm names by their syntax only: images)."""
    return name in MODELS.get(modality, ()) or (modality == "image" and is_timm(name) and len(name) > len(TIMM))


def input_arch(model: str, frame_backbone: str) -> str:
    """The network whose input preparation a dfp model follows: the frame backbone for frame_pool."""
    return frame_backbone if model == "frame_pool" else model


def check_timm_name(name: str, label: str = "--model") -> None:
    """A one-line ModelError unless timm knows `name` (architecture, and the tag if one is given), with the closest
    names for a typo. Imports timm: call it after the cheap checks."""
    import timm
    arch, _, tag = name[len(TIMM):].partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(TIMM + c for c in close)}?" if close else \
            "; see timm.list_models() for the names"
        raise ModelError(f"{label} {name}: timm has no model {arch!r}{hint}")
    if tag and name[len(TIMM):] not in timm.list_pretrained(arch + ".*"):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(arch + ".*")]
        close = difflib.get_close_matches(tag, tags, n=3, cutoff=0.3) or tags[:3]
        hint = f"; {arch}'s tags include {', '.join(close)}" if close else f"; {arch} has no pretrained tags"
        raise ModelError(f"{label} {name}: timm has no pretrained tag {tag!r} for {arch}{hint}")


def input_config(arch: str) -> dict:
    """{"image_size", "mean", "std", "interpolation"} the backbone `arch` was pretrained with; image_size is None for
    torchvision models (dfp's --image-size default applies)."""
    if not is_timm(arch):  # what torchvision's ImageNet models expect, resized as dfp always has
        from .augment import MEAN, STD
        return {"image_size": None, "mean": MEAN, "std": STD, "interpolation": "bilinear"}
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg
    try:
        cfg = get_pretrained_cfg(arch[len(TIMM):])
    except RuntimeError as e:  # a tag the architecture does not have
        raise ModelError(f"{arch}: {e}") from None
    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg is not None else {"input_size": (3, 224, 224)})
    interp = data.get("interpolation", "bicubic")
    return {"image_size": int(data["input_size"][-1]), "mean": tuple(float(m) for m in data["mean"]),
            "std": tuple(float(s) for s in data["std"]),
            "interpolation": interp if interp in INTERPOLATIONS else "bicubic"}


def _fetch_errors() -> tuple[type, ...]:
    """What a failed download raises: urllib's and the hub's errors are OSErrors, huggingface_hub 1.x+ uses httpx."""
    errors: list[type] = [OSError, ValueError]
    try:
        import httpx
        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    try:
        from huggingface_hub.errors import HfHubHTTPError
        errors.append(HfHubHTTPError)
    except ImportError:
        pass
    return tuple(errors)


def timm_backbone(name: str, pretrained: bool, image_size: int | None = None):
    """(network giving pooled (B, D) embeddings, D, the classifier's key prefixes in timm's own state dicts).

    `num_classes=0` leaves timm's classifier out (forward runs forward_features and the pooling of forward_head),
    so dfp's one-logit head sits on the same embedding SMOTE reads. A model built for one input size (most ViTs)
    is built for `image_size` instead when that differs (timm resamples pretrained position embeddings)."""
    import timm
    model_id = name[len(TIMM):]
    kwargs = _size_kwargs(name, image_size)
    try:
        net = timm.create_model(model_id, pretrained=pretrained, num_classes=0, **kwargs)
    except TypeError as e:
        if not kwargs:
            raise
        raise ModelError(f"{name} takes only {input_config(name)['image_size']} px input ({e}); leave --image-size "
                         f"out or give that size") from None
    except RuntimeError as e:
        if not pretrained or "pretrained" in str(e).lower() or "tag" in str(e).lower():
            raise ModelError(f"{name}: {' '.join(str(e).split())[:200]}") from None
        raise _offline(name, e) from None
    except _fetch_errors() as e:
        if not pretrained:
            raise
        raise _offline(name, e) from None
    cls = net.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(c + "." for c in ((cls,) if isinstance(cls, str) else cls))
    return net, int(net.num_features), prefixes


def _size_kwargs(name: str, image_size: int | None) -> dict:
    from timm.models import get_pretrained_cfg
    try:
        cfg = get_pretrained_cfg(name[len(TIMM):])
    except RuntimeError:
        return {}
    fixed = cfg is not None and cfg.fixed_input_size
    return {"img_size": image_size} if fixed and image_size and image_size != cfg.input_size[-1] else {}


def _offline(name: str, e: BaseException) -> ModelError:
    return ModelError(f"--pretrained: could not fetch timm weights for {name} ({type(e).__name__}; offline?); "
                      f"run once online to fill the Hugging Face cache (HF_HOME), or give --weights FILE "
                      f"(a timm state dict: .safetensors, .pth or .bin)")
