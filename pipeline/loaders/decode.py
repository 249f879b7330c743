"""Per-sample CPU decoding and augmentation with torch/torchvision/torchaudio.

Used by the PyTorch backend, and by the DALI backend to tell which samples of a failed batch are
undecodable. A sample that does not decode returns None: callers skip and count it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch

from ..augment import AUDIO, IMAGE, AudioFeatures, audio_wave_aug, crop_or_pad, torch_image_eval, torch_image_train


@dataclass(frozen=True)
class LoaderConfig:
    modality: str
    image_size: int = 224
    audio: AudioFeatures = field(default_factory=AudioFeatures)
    strong_share: float = 0.0  # share of training samples (either class) drawn to the strong recipe
    augment: bool = True  # False: evaluation transforms (no randomness)


def _decode_jpeg(b: bytes) -> torch.Tensor | None:
    from torchvision.io import ImageReadMode, decode_jpeg
    try:
        return decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        return None


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
    return torch_image_eval(x, cfg.image_size)


def audio_sample(comps: list[bytes], cfg: LoaderConfig, strong: bool, rng: np.random.Generator) -> np.ndarray | None:
    """A fixed-length waveform; the log-mel is computed per batch (`augment.torch_log_mel`)."""
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
