"""Per-sample CPU decoding and augmentation with torch/torchvision/torchaudio.

Used by the PyTorch backend, and by the DALI backend to tell which samples of a failed batch are
undecodable. A sample that does not decode returns None: callers skip and count it.

Which JPEGs decode is settled by one test, `media.image.jpeg_check`, for both backends and `dfp verify`:
torchvision's decoder is used where it agrees and PIL's verdict where it refuses, and `Decodability` applies
the test to samples that lenient decoders (DALI's, nvJPEG) would turn into partly grey pictures.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch

from ..augment import (AUDIO, IMAGE, MEAN, STD, AudioFeatures, audio_wave_aug, crop_or_pad, torch_image_eval,
                       torch_image_train)
from ..media.image import ends_with_eoi, jpeg_check


@dataclass(frozen=True)
class LoaderConfig:
    modality: str
    image_size: int = 224
    audio: AudioFeatures = field(default_factory=AudioFeatures)
    strong_share: float = 0.0  # share of training samples (either class) drawn to the strong recipe
    augment: bool = True  # False: evaluation transforms (no randomness)
    mean: tuple[float, ...] = MEAN  # the model's normalisation and eval-resize interpolation (run's preprocess)
    std: tuple[float, ...] = STD
    interpolation: str = "bilinear"
    audio_input: str = "logmel"  # "waveform": backends deliver the (B, samples) waveform, not a log-mel


def _decode_jpeg(b: bytes) -> torch.Tensor | None:
    """A JPEG, or a PNG from shards packed with --image-codec png, as (3, H, W) uint8."""
    if b[:8] == PNG_SIGNATURE:
        return _decode_png(b)
    from torchvision.io import ImageReadMode, decode_jpeg
    try:
        return decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        # torchvision also refuses JPEGs on libjpeg's warnings, which PIL, the judge, decodes
        return _pil_decode(b)


def _pil_decode(b: bytes) -> torch.Tensor | None:
    from ..media.image import decode_jpeg
    if jpeg_check(b) is not None:
        return None
    try:
        return torch.from_numpy(decode_jpeg(b).copy()).permute(2, 0, 1).contiguous()
    except Exception:
        return None


def settled(manifest: dict) -> bool:
    """Whether every JPEG of these shards passed `jpeg_check` when packed: `--check decode` (the default;
    absent in shards from before the option, which always decoded) proves the kept ones, and the others
    were written by PIL. Shards from `dfp predict`'s memory index are prepared the same way."""
    return (manifest.get("params") or {}).get("check", "decode") == "decode"


class Decodability:
    """`jpeg_check`'s verdict on each sample of an index, computed once per sample (the first time it is
    read) where the shards do not settle it (`settled`), and for any JPEG without an end-of-image marker
    (truncated, or trailing data after it: lenient decoders take both). Audio needs none, as DALI's decoder
    and the torch backend's both use libsndfile, nor PNG payloads (--image-codec png), which the packer
    always writes itself and PIL decodes in both backends."""

    def __init__(self, index):
        self.jpeg = index.modality != "audio" and index.exts[0].endswith("jpg")
        self.needed = self.jpeg and not settled(index.manifest)
        self.known = np.zeros(len(index) if self.jpeg else 0, np.int8)  # 0 unknown, 1 decodes, -1 does not

    def __call__(self, i: int, comps: list[bytes]) -> bool:
        if not self.jpeg:
            return True
        if not self.known[i]:
            if not self.needed and all(ends_with_eoi(b) for b in comps):
                self.known[i] = 1
            else:
                self.known[i] = 1 if all(jpeg_check(bytes(b)) is None for b in comps) else -1
        return self.known[i] > 0


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_png(b: bytes) -> torch.Tensor | None:
    # PIL, not torchvision: torchvision's libpng fails ("bad parameters to zlib") in a process that loaded
    # decord first, as `dfp predict` on video does; PNG is lossless, so every decoder gives the same pixels
    from PIL import Image
    try:
        with Image.open(io.BytesIO(b)) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError):
        return None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _decode_audio(b: bytes, sr: int) -> np.ndarray | None:
    import soundfile as sf
    try:
        x, got = sf.read(io.BytesIO(b), dtype="float32", always_2d=True)
    except Exception:
        return None
    if x.size == 0:
        return None
    x = x.mean(axis=1)
    if got != sr:
        from ..media.audio import resample
        x = resample(x, got, sr)
    return x


def decodes(comps: list[bytes] | None, modality: str, feat: AudioFeatures) -> bool:
    """Whether every component of a sample decodes with the CPU decoders (the test for a bad sample)."""
    if comps is None:
        return False
    if modality == "audio":
        return _decode_audio(comps[0], feat.sample_rate) is not None
    return all(_decode_jpeg(b) is not None for b in comps)


def visual_sample(comps: list[bytes], cfg: LoaderConfig, strong: bool) -> torch.Tensor | None:
    """Image (C,S,S) or video (T,C,S,S) uint8; one random draw shared by a clip's frames."""
    frames = [_decode_jpeg(b) for b in comps]
    if any(f is None for f in frames):
        return None
    if len({tuple(f.shape) for f in frames}) != 1:
        return None
    x = frames[0] if cfg.modality == "image" else torch.stack(frames)
    if cfg.augment:
        return torch_image_train(x, IMAGE["strong" if strong else "standard"], cfg.image_size)
    return torch_image_eval(x, cfg.image_size, cfg.interpolation)


def audio_sample(comps: list[bytes], cfg: LoaderConfig, strong: bool, rng: np.random.Generator) -> np.ndarray | None:
    """A fixed-length waveform; the log-mel, where the model takes one, is computed per batch (`augment.torch_log_mel`)."""
    x = _decode_audio(comps[0], cfg.audio.sample_rate)
    if x is None:
        return None
    x = crop_or_pad(x, cfg.audio.samples, rng if cfg.augment else None)
    if cfg.augment:
        x = audio_wave_aug(x, AUDIO["strong" if strong else "standard"], rng)
    return x


def decode_batch(read, indices: np.ndarray, strong: np.ndarray, cfg: LoaderConfig, seed: tuple[int, ...]):
    """Decode one batch. `read(i)` gives sample i's payload components (or None); `strong`: per sample,
    whether it gets the strong recipe (`Loader.strong_views`).

    Returns (data, ok): data is a uint8 tensor (B,...) for images/video or a float32 (B, samples)
    waveform tensor for audio, holding only the samples that decoded; ok is a bool mask over indices.
    The random state comes from `seed` alone, so results do not depend on which worker ran it.
    """
    rng = np.random.default_rng(list(seed))
    torch.manual_seed(int(rng.integers(2**62)))
    out, ok = [], np.zeros(len(indices), bool)
    for j, i in enumerate(indices):
        comps = read(int(i))
        if comps is None:
            continue
        if cfg.modality == "audio":
            x = audio_sample(comps, cfg, bool(strong[j]), rng)
            x = None if x is None else torch.from_numpy(x)
        else:
            x = visual_sample(comps, cfg, bool(strong[j]))
        if x is not None:
            out.append(x)
            ok[j] = True
    data = torch.stack(out) if out else None
    return data, ok
