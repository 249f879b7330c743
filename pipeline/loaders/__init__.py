"""One loader contract over two backends (DALI, PyTorch).

`make_loader(shards, split, backend, device, options, rank, world_size)` returns a `Loader`:
iterating yields `(inputs, labels, keys)` on the target device, `len()` is batches per epoch
for this rank. Training draws one weighted plan per epoch (same on every rank, split
rank-wise); evaluation reads every sample of the split exactly once across ranks.

A sample that cannot be read or decoded is skipped and counted (`loader.skipped`); in
training its slot is filled with another sample of the same batch so every rank keeps the
same batch shape and count.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..augment import (AUDIO, MEAN, STD, STRONG_SHARE, AudioFeatures, normalize_images, spec_masks, strong_views,
                       torch_log_mel)
from ..errors import FormatError, InputError, warn
from ..formats import CLASSES, SampleMeta, read_manifest
from ..names import LOADER_BACKENDS as BACKENDS
from ..sampling import EpochSampler, eval_indices, rank_slice
from ..stats import minority_class
from .decode import LoaderConfig
from .index import ShardIndex

AUDIO_INPUTS = ("logmel", "waveform")


@dataclass
class LoaderOptions:
    batch_size: int = 32
    train: bool = True  # False: evaluation mode (no resampling, no augmentation, every sample once)
    sampling: str | dict = "inverse"  # inverse | natural | sqrt | {"real": w, "fake": w}
    epoch_len: int | None = None  # default: the split's size
    seed: int = 0
    image_size: int = 224
    audio_seconds: float = 4.0
    minority_augment: bool = True  # strong recipe for STRONG_SHARE of the samples, both classes alike
    minority: tuple[str, ...] | None = None  # whose repeats call for it; default: the split's smaller class
    workers: int = 2
    max_samples_per_class: int | None = None
    gpu_decode: bool = False  # torch backend: decode JPEGs with torchvision on the target device
    dali_threads: int | None = None  # DALI backend: CPU threads (default: this rank's share of the cores, plus one)
    hw_decoder_load: float | None = None  # DALI on a GPU: share of JPEGs for the hardware decoder (DALI's default)
    mean: tuple[float, ...] = MEAN  # images and video frames: the model's normalisation (backbones.input_config)
    std: tuple[float, ...] = STD
    interpolation: str = "bilinear"  # of the evaluation resize
    cache_dir: str | None = None  # shards at a URL: whole shards cached here (else ranged reads); see loaders.remote
    cache_limit: int = 0  # bytes the cache folder may hold
    audio_input: str = "logmel"  # audio: "logmel" (B, 1, n_mels, frames) or "waveform" (B, samples), the model's


class Chunks:
    """Consecutive fixed-size slices of an index array; the last may be shorter."""

    def __init__(self, idx: np.ndarray, size: int):
        self.idx, self.size = idx, size

    def __len__(self) -> int:
        return -(-len(self.idx) // self.size)

    def __getitem__(self, b: int) -> np.ndarray:
        if not 0 <= b < len(self):
            raise IndexError(b)
        return self.idx[b * self.size:(b + 1) * self.size]

    def __iter__(self):
        return (self[b] for b in range(len(self)))


class Loader:
    def __init__(self, index: ShardIndex, opts: LoaderOptions, device: torch.device, backend: str,
                 rank: int = 0, world_size: int = 1):
        self.index, self.opts, self.device, self.backend = index, opts, torch.device(device), backend
        self.rank, self.world_size = rank, world_size
        self.modality = index.modality
        if opts.minority is not None:
            minority = tuple(CLASSES.index(c) for c in opts.minority)
        else:
            low = minority_class(index.class_counts())
            minority = () if low is None else (CLASSES.index(low),)
        sr = index.manifest.get("sample_rate") or 16000
        share = STRONG_SHARE if (opts.train and opts.minority_augment and minority) else 0.0
        feat = AudioFeatures(sample_rate=sr, seconds=opts.audio_seconds)
        if opts.audio_input not in AUDIO_INPUTS:
            raise InputError(f"audio input {opts.audio_input!r}: choose {' or '.join(AUDIO_INPUTS)}")
        self.cfg = LoaderConfig(self.modality, opts.image_size, feat, share, opts.train,
                                mean=tuple(opts.mean), std=tuple(opts.std), interpolation=opts.interpolation,
                                audio_input=opts.audio_input)
        self.epoch, self.start_batch = 0, 0
        self.skipped = 0
        self.delivered = np.zeros(len(CLASSES), np.int64)
        if opts.train:
            if len(index) == 0:
                raise InputError(f"split '{index.split}' of {index.root} is empty")
            self.sampler = EpochSampler(index.labels, opts.sampling, opts.epoch_len or len(index), opts.seed,
                                        rank, world_size, opts.batch_size)
        else:
            self.sampler = None
            self._eval = eval_indices(len(index), rank, world_size)
        from . import dali as dali_backend, pytorch as torch_backend
        self.producer = (dali_backend if backend == "dali" else torch_backend).Producer(self)

    # ------------------------------------------------------------------ plan
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches(self) -> "Chunks":
        """This rank's batches of the current epoch, as views of one index array (no per-batch objects)."""
        if self.sampler is not None:
            s = self.sampler
            idx = rank_slice(s.plan(self.epoch), self.rank, self.world_size, s.batch_size, self.start_batch)
            return Chunks(idx, s.batch_size)
        return Chunks(self._eval, self.opts.batch_size)

    def __len__(self) -> int:
        if self.sampler is not None:
            return len(self.sampler) - self.start_batch
        return -(-len(self._eval) // self.opts.batch_size)

    def sample_keys(self, b: int) -> np.ndarray:
        """Plan positions of this iteration's batch b: each sample's augmentation is keyed by (seed, epoch, position),
        so a resumed epoch replays the same randomness whatever the backend's state."""
        return self.plan_positions(b, 1)[0]

    def plan_positions(self, b: int, n: int) -> np.ndarray:
        """(n, batch size) plan positions of this iteration's batches b..b+n-1."""
        a = self.start_batch + b
        bs, w = self.sampler.batch_size, self.world_size
        return (np.arange(n * bs, dtype=np.int64).reshape(n, bs) + a * bs) * w + self.rank

    def strong_views(self, positions: np.ndarray) -> np.ndarray:
        """Which of these plan positions get the strong recipe (keyed, the same for either class)."""
        return strong_views(self.opts.seed, self.epoch, positions, self.cfg.strong_share)

    @property
    def rescued_batches(self) -> int:
        """Batches a backend had to run again without their undecodable samples."""
        return getattr(self.producer, "rescued_batches", 0)

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        skipped_before = self.skipped
        for b, (data, ok, idx) in enumerate(self._produce()):
            bad = int((~ok).sum())
            self.skipped += bad
            if not ok.any():
                if self.sampler is not None:
                    raise FormatError(f"a whole batch of {len(idx)} samples failed to decode in {self.index.root}; "
                                       "run `dfp verify` on the shards")
                continue
            good = idx[ok]
            pos = self.sample_keys(b)[ok] if self.sampler is not None else None
            if bad and self.sampler is not None:
                # keep the batch shape: refill failed slots with samples of the same batch
                rep = np.arange(len(idx)) % len(good)
                data, good, pos = data[torch.from_numpy(rep)], good[rep], pos[rep]
            labels = self.index.labels[good]
            self.delivered += np.bincount(labels, minlength=len(CLASSES))
            x = self._finish(data, pos, b)
            y = torch.from_numpy(labels.astype(np.float32)).to(self.device, non_blocking=True)
            yield x, y, [self.index.key(i) for i in good]
        if self.skipped > skipped_before:
            share = f" (on rank 0 of {self.world_size})" if self.world_size > 1 else ""
            warn(f"skipped {self.skipped - skipped_before} unreadable sample(s) in {self.index.root} "
                 f"split {self.index.split} this epoch{share}", rank=self.rank)
        self.start_batch = 0

    def _produce(self):
        """The backend's batches. A shard deleted after start-up fails deep inside a backend (a worker process,
        DALI's reader thread), so any failure there is first explained by the shard files, in one line."""
        batches = self.batches()
        prefetch = getattr(self.index, "prefetch", None)
        if prefetch is not None:
            prefetch(batches)
        try:
            yield from self.producer.run(batches)
        except Exception:
            check = getattr(self.index, "check_files", None)
            if check is not None:
                check()
            raise

    def _finish(self, data: torch.Tensor, positions: np.ndarray | None, b: int) -> torch.Tensor:
        """Device transfer and the last, cheap steps on the device: normalisation, log-mel, masks
        (`positions`: the rows' plan positions in training, which choose their recipes). Waveforms for an SSL
        front-end go as they are: gain and noise are applied already, and time/frequency masks are a
        spectrogram's."""
        x = data.to(self.device, non_blocking=True)
        if self.modality == "audio" and self.cfg.audio_input == "waveform":
            return x
        if self.modality == "audio":
            if x.dim() == 2:  # waveforms from the torch backend
                x = torch_log_mel(x, self.cfg.audio)
            elif x.dim() == 3:
                x = x.unsqueeze(1)
            if self.cfg.augment:
                strong = self.strong_views(positions)
                rng = np.random.default_rng([self.opts.seed, self.epoch, self.rank, self.start_batch + b, 1])
                x = spec_masks(x, [AUDIO["strong" if s else "standard"] for s in strong], rng)
            return x
        if x.dtype == torch.uint8:
            x = normalize_images(x, self.cfg.mean, self.cfg.std)
        if self.device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def sample_meta(self, keys: list[str]) -> dict[str, SampleMeta]:
        """key -> (source, group, attack) from one read of each sample's JSON (evaluation output only)."""
        pos = {k: i for i, k in enumerate(self.index.keys.astype(str))}
        return {k: SampleMeta.from_json(self.index.meta(pos[k])) for k in keys}

    def class_counts_delivered(self) -> dict[str, int]:
        return {c: int(self.delivered[i]) for i, c in enumerate(CLASSES)}


def resolve_backend(name: str) -> str:
    """auto: dali where it is installed, else torch."""
    if name != "auto":
        return name
    try:
        import nvidia.dali  # noqa: F401
        return "dali"
    except ImportError:
        return "torch"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from ..errors import InputError
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        from ..errors import InputError
        raise InputError(f"--device {device!r}: choose auto, cpu or cuda")
    return torch.device(device)


def make_loader(shards, split: str, backend: str = "torch", device: str | torch.device = "cpu",
                options: LoaderOptions | None = None, rank: int = 0, world_size: int = 1,
                manifest: dict | None = None, index=None) -> Loader:
    """`index`: samples already indexed (e.g. a `memory.MemoryIndex`); `shards` and `split` are then unused."""
    opts = options or LoaderOptions()
    if backend not in BACKENDS:
        from ..errors import InputError
        raise InputError(f"--backend {backend!r}: choose dali or torch")
    if index is None:
        manifest = manifest or read_manifest(shards)
        index = ShardIndex(shards, split, manifest, opts.max_samples_per_class, opts.seed, opts.cache_dir,
                           opts.cache_limit)
    return Loader(index, opts, torch.device(device), backend, rank, world_size)
