"""Augmentation recipes, standard and "strong", shared by both loader backends.

The numbers live here once; `loaders/dali.py` builds a DALI graph from them and the torch
functions below apply them with torchvision v2 / torchaudio.

Minority augmentation: the sampler repeats the minority class's samples, and each repeat is its
own keyed draw, so widening the distribution those draws come from diversifies the minority's
views most. Which recipe a sample gets never depends on its class: with minority augmentation on
(and the split imbalanced) every training sample of either class gets the strong recipe with
probability `STRONG_SHARE` (a keyed draw), the standard one otherwise. A recipe chosen by class
would mark the class in the very batches the model learns from (mask widths, black rotation
corners, saturation): a shortcut absent at test time. `audit.augmentation` measures such traces.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# ImageNet statistics: what torchvision backbones expect.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageAug:
    scale: tuple[float, float]  # random-resized-crop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotate: float = 0.0  # degrees, uniform in [-rotate, rotate]
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    flip: float = 0.5


@dataclass(frozen=True)
class AudioAug:
    gain_db: float  # uniform in [-gain_db, gain_db]
    noise: float  # max noise std relative to full scale
    mask_time: int = 0  # max width of one time mask, in frames
    mask_freq: int = 0  # max height of one frequency mask, in mel bins


# Saturation needs a colour-space round trip per pixel (the most expensive colour step on a CPU), so
# the standard recipe leaves it out and only samples drawn to the strong recipe pay for it.
IMAGE = {"standard": ImageAug(scale=(0.6, 1.0), rotate=5.0, brightness=0.1, contrast=0.1, saturation=0.0),
         "strong": ImageAug(scale=(0.35, 1.0), rotate=15.0, brightness=0.3, contrast=0.3, saturation=0.3)}
AUDIO = {"standard": AudioAug(gain_db=3.0, noise=0.002, mask_time=8, mask_freq=4),
         "strong": AudioAug(gain_db=6.0, noise=0.01, mask_time=24, mask_freq=10)}
# Share of training samples, of both classes alike, that get the strong recipe under minority augmentation.
STRONG_SHARE = 0.5


@dataclass(frozen=True)
class AudioFeatures:
    sample_rate: int = 16000
    seconds: float = 4.0
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64

    @property
    def samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @property
    def frames(self) -> int:  # centred windows
        return self.samples // self.hop_length + 1


# ---------------------------------------------------------------- keyed random parameters
# A sample's augmentation is drawn from uniforms keyed by (seed, epoch, plan position), so it does not
# depend on how long a pipeline has lived: a resumed run replays the same augmentations. The uniforms
# come from a counter-based hash (splitmix64's finaliser) computed for a whole batch at once: a numpy
# Generator per sample cost 50 us, about 4% of a CPU batch's time on the loader's main thread.
_SLOTS = 16  # uniforms reserved per plan position
_M = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mix(z: np.ndarray) -> np.ndarray:
    z = z + _M[0]
    z = (z ^ (z >> np.uint64(30))) * _M[1]
    z = (z ^ (z >> np.uint64(27))) * _M[2]
    return z ^ (z >> np.uint64(31))


def keyed_uniforms(seed: int, epoch: int, positions: np.ndarray, k: int, first: int = 0) -> np.ndarray:
    """(len(positions), k) uniforms in [0, 1), a pure function of (seed, epoch, position, column);
    columns first..first+k-1 of the position's slots."""
    assert first + k <= _SLOTS
    key = _mix(_mix(np.array([seed], np.uint64)) ^ np.array([epoch], np.uint64))
    cells = (np.asarray(positions, np.uint64)[:, None] * np.uint64(_SLOTS)
             + np.arange(first, first + k, dtype=np.uint64))
    return (_mix(cells ^ key) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


IMAGE_FIELDS = ("anchor", "shape", "flip", "angle", "brightness", "contrast", "saturation")
AUDIO_FIELDS = ("start", "gain", "sigma", "noise")
IMAGE_DRAWS, AUDIO_DRAWS = 9, 4  # uniforms each sample uses


def _pick(strong: np.ndarray, recipes: dict, value) -> np.ndarray:
    """Per sample, `value(recipe)` of its recipe: the strong one where `strong`, else the standard one."""
    return np.where(strong, value(recipes["strong"]), value(recipes["standard"]))


def draw_image(u: np.ndarray, strong: np.ndarray, recipes: dict = IMAGE) -> dict[str, np.ndarray]:
    """A batch's random-resized-crop windows (normalised anchor and shape), flips, rotations and colour factors
    from its (B, 9) uniforms. Whole-batch arrays: DALI takes each as one batch, without a copy per sample."""
    pick = lambda value: _pick(strong, recipes, value)
    lo = pick(lambda a: a.scale[0])
    area = lo + u[:, 0] * (pick(lambda a: a.scale[1]) - lo)
    r0, r1 = np.log(pick(lambda a: a.ratio[0])), np.log(pick(lambda a: a.ratio[1]))
    ratio = np.exp(r0 + u[:, 1] * (r1 - r0))
    cw, ch = np.minimum(np.sqrt(area * ratio), 1.0), np.minimum(np.sqrt(area / ratio), 1.0)
    jitter = lambda v, amount: 1.0 + (2.0 * v - 1.0) * amount
    f = np.float32
    return {"anchor": np.stack([u[:, 2] * (1.0 - cw), u[:, 3] * (1.0 - ch)], 1).astype(f),
            "shape": np.stack([cw, ch], 1).astype(f), "flip": (u[:, 4] < pick(lambda a: a.flip)).astype(f),
            "angle": ((2.0 * u[:, 5] - 1.0) * pick(lambda a: a.rotate)).astype(f),
            "brightness": jitter(u[:, 6], pick(lambda a: a.brightness)).astype(f),
            "contrast": jitter(u[:, 7], pick(lambda a: a.contrast)).astype(f),
            "saturation": jitter(u[:, 8], pick(lambda a: a.saturation)).astype(f)}


_NOISE: dict[int, np.ndarray] = {}


def _noise_table(samples: int) -> np.ndarray:
    """One fixed table of Gaussian noise; a sample's noise is a window of it at a keyed offset (fresh noise per
    sample cost 1.7 ms of the main thread each)."""
    n = max(1 << 20, 4 * samples)
    if n not in _NOISE:
        _NOISE[n] = np.random.default_rng(0x5EED).standard_normal(n, dtype=np.float32)
    return _NOISE[n]


def draw_audio(u: np.ndarray, strong: np.ndarray, samples: int, recipes: dict = AUDIO) -> dict[str, np.ndarray]:
    """A batch's crop starts (fraction of the slack), gain factors, noise levels and noise, from its (B, 4) uniforms."""
    pick = lambda value: _pick(strong, recipes, value)
    table = _noise_table(samples)
    off = (u[:, 3] * (len(table) - samples)).astype(np.int64)
    f = np.float32
    return {"start": u[:, 0].astype(f), "gain": (10.0 ** ((2.0 * u[:, 1] - 1.0) * pick(lambda a: a.gain_db) / 20.0)).astype(f),
            "sigma": (u[:, 2] * pick(lambda a: a.noise)).astype(f),
            "noise": np.stack([table[o:o + samples] for o in off])}


def strong_views(seed: int, epoch: int, positions: np.ndarray, share: float) -> np.ndarray:
    """Which plan positions get the strong recipe: a keyed draw at rate `share`, blind to the sample's class.
    It uses the last of a position's slots, which the parameter draws above never reach."""
    if share <= 0.0:
        return np.zeros(len(positions), bool)
    return keyed_uniforms(seed, epoch, positions, 1, first=_SLOTS - 1)[:, 0] < share


# ---------------------------------------------------------------- torch implementations
def torch_image_train(img: torch.Tensor, aug: ImageAug, size: int) -> torch.Tensor:
    """uint8 (C,H,W) or (T,C,H,W) -> uint8 (..., C, size, size); one set of random parameters per call."""
    from torchvision.transforms import v2
    t = v2.Compose([
        v2.RandomResizedCrop(size, scale=aug.scale, ratio=aug.ratio, antialias=True),
        v2.RandomHorizontalFlip(aug.flip),
        v2.RandomRotation(aug.rotate) if aug.rotate else v2.Identity(),
        v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation) if aug.brightness or aug.contrast or aug.saturation else v2.Identity(),
    ])
    return t(img)


def torch_image_eval(img: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    from torchvision.transforms import v2
    mode = v2.InterpolationMode(interpolation)
    return v2.functional.resize(img, [size, size], interpolation=mode, antialias=True)


def normalize_images(x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """uint8 (..., C, H, W) on any device -> float normalised; done on the target device so uint8 travels.
    mean, std: the model's (the run's preprocess settings), ImageNet's by default."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=x.device).view(3, 1, 1)
    bias = torch.tensor([-m / s for m, s in zip(mean, std)], device=x.device).view(3, 1, 1)
    return x.to(torch.float32).mul_(scale).add_(bias)  # in place: one conversion, two passes, no temporaries


def crop_or_pad(x: np.ndarray, n: int, rng: np.random.Generator | None) -> np.ndarray:
    """Random crop (train) or crop from the start (eval) to n samples; zero-pad short clips."""
    if len(x) >= n:
        start = int(rng.integers(0, len(x) - n + 1)) if rng is not None else 0
        return x[start:start + n]
    return np.pad(x, (0, n - len(x)))


_MEL_CACHE: dict = {}


def torch_log_mel(wave: torch.Tensor, feat: AudioFeatures) -> torch.Tensor:
    """(B, samples) float -> (B, 1, n_mels, frames) log-mel in dB, 80 dB below each clip's peak."""
    import torchaudio
    key = (feat, wave.device)
    mel = _MEL_CACHE.get(key)
    if mel is None:
        mel = _MEL_CACHE[key] = torchaudio.transforms.MelSpectrogram(
            sample_rate=feat.sample_rate, n_fft=feat.n_fft, win_length=feat.win_length, hop_length=feat.hop_length,
            n_mels=feat.n_mels, power=2.0, center=True, norm="slaney", mel_scale="slaney").to(wave.device)
    spec = mel(wave)
    db = 10.0 * torch.log10(spec.clamp_min(1e-10))
    peak = db.amax(dim=(-2, -1), keepdim=True)
    return torch.maximum(db, peak - 80.0).unsqueeze(1)


def audio_wave_aug(x: np.ndarray, aug: AudioAug, rng: np.random.Generator) -> np.ndarray:
    gain = 10 ** (rng.uniform(-aug.gain_db, aug.gain_db) / 20)
    return (x * gain + rng.normal(0, rng.uniform(0, aug.noise), len(x))).astype(np.float32)


def spec_masks(spec: torch.Tensor, augs: list[AudioAug], rng: np.random.Generator) -> torch.Tensor:
    """SpecAugment-style: one time and one frequency mask per sample, set to the clip's minimum."""
    out = spec.clone()
    _, _, f, t = out.shape
    for i, aug in enumerate(augs):
        low = out[i].min()
        if aug.mask_time:
            w = int(rng.integers(0, aug.mask_time + 1)); s = int(rng.integers(0, max(t - w, 1)))
            out[i, :, :, s:s + w] = low
        if aug.mask_freq:
            h = int(rng.integers(0, aug.mask_freq + 1)); s = int(rng.integers(0, max(f - h, 1)))
            out[i, :, s:s + h, :] = low
    return out
