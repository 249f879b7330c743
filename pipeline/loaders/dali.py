"""DALI backend: planned samples' bytes go in through `external_source`; DALI decodes and augments.

Decoding runs on the GPU (`device="mixed"`) when the loader's device is CUDA and on DALI's CPU
threads otherwise: the graph functions are the same, only the device string changes.
Images: decode only the random crop (`decoders.image_slice`), then one fused warp (scale,
rotation, flip) in uint8, then the colour jitter written as float into the normalisation, all
where DALI runs; video frames stay uint8 and torch normalises them on the device. Per-sample parameters blend the standard and strong recipes with a 0/1
`strong` input, so minority samples get stronger augmentation inside one batch.
"""
from __future__ import annotations

import gc
import math
import os
from collections import deque

import numpy as np
import torch

from ..augment import AUDIO, IMAGE, MEAN, STD
from .decode import decode_batch

_MAX_THREADS = 8
_fork_guarded = False


def _guard_forks() -> None:
    """A forked child (a DataLoader worker, say) inherits this process's DALI pipelines and batches
    but not DALI's threads: if its cycle collector frees one, the child hangs or crashes (both seen).
    Freezing what the child inherited keeps the collector away from those objects; what the child
    creates itself is collected as usual."""
    global _fork_guarded
    if not _fork_guarded:
        os.register_at_fork(after_in_child=gc.freeze)
        _fork_guarded = True


def _blend(strong, standard: float, strong_value: float):
    return standard + strong * (strong_value - standard)


def _geometry(strong):
    """Per-sample random-resized-crop window (normalised), flip and rotation angle."""
    from nvidia.dali import fn, math as dmath, types
    std, stg = IMAGE["standard"], IMAGE["strong"]
    u = lambda lo=0.0, hi=1.0: fn.random.uniform(range=(lo, hi))
    area_lo = _blend(strong, std.scale[0], stg.scale[0])
    area = area_lo + u() * (1.0 - area_lo)
    ratio = dmath.exp(u(math.log(std.ratio[0]), math.log(std.ratio[1])))
    cw = dmath.min(dmath.sqrt(area * ratio), 1.0)
    ch = dmath.min(dmath.sqrt(area / ratio), 1.0)
    anchor = fn.stack(u() * (1.0 - cw), u() * (1.0 - ch))
    flip = fn.cast(fn.random.coin_flip(probability=std.flip), dtype=types.FLOAT)
    angle = u(-1.0, 1.0) * _blend(strong, std.rotate, stg.rotate)
    return anchor, fn.stack(cw, ch), flip, angle


def _crop_warp(jpegs, geometry, size: int, decode_device: str):
    """Decode only the crop window, then one warp: centre, flip, scale to size, rotate, re-centre.

    Nearest-neighbour sampling (torchvision's RandomRotation default) and black corners (its fill).
    `warp_perspective` (OpenCV's on a CPU) with the affine matrix as a 3x3 cost half of what
    `warp_affine` did here (0.5 vs 0.9 ms of CPU a sample, same geometry)."""
    from nvidia.dali import fn, types
    anchor, shape, flip, angle = geometry
    img = fn.decoders.image_slice(jpegs, anchor, shape, device=decode_device, output_type=types.RGB,
                                  normalized_anchor=True, normalized_shape=True)
    hw = fn.cast(img.shape(), dtype=types.FLOAT)
    h_px, w_px = hw[0], hw[1]
    mt = fn.transforms.translation(offset=fn.stack(-0.5 * w_px, -0.5 * h_px))
    mt = fn.transforms.scale(mt, scale=fn.stack((1.0 - 2.0 * flip) * (float(size) / w_px), float(size) / h_px))
    mt = fn.transforms.rotation(mt, angle=angle)
    mt = fn.transforms.translation(mt, offset=[size / 2.0, size / 2.0])
    mt = fn.cat(mt, fn.constant(fdata=[0.0, 0.0, 1.0], shape=[1, 3]), axis=0)
    return fn.experimental.warp_perspective(img, matrix=mt, size=[size, size], inverse_map=False,
                                            interp_type=types.INTERP_NN, border_mode="constant", fill_value=[0.0])


def image_train_graph(jpegs, strong, size: int, decode_device: str, finish=None):
    return _colour(_crop_warp(jpegs, _geometry(strong), size, decode_device), strong, finish=finish)


def _colour(img, strong, params=None, finish=None):
    """Brightness and contrast for every sample; saturation only where the recipe asks for it, i.e.
    for strong samples, through a DALI conditional so the others skip the cost.

    With `finish` (normalisation to float CHW) the colour ops write float into it, so pixel values are
    not clipped to [0, 255] before normalising. Writing uint8 costs a round-and-clamp per element:
    perf put `hsv` at 14% of a CPU pipeline's cycles with uint8 output and 5% with float. Normalising
    after the conditional also keeps the output one contiguous batch (no merge copy)."""
    from nvidia.dali import fn, types
    b, c, s = params or _colour_params(strong)
    out = {"dtype": types.FLOAT} if finish else {}  # without finish (video frames): uint8 out
    if IMAGE["strong"].saturation and strong > 0.5:
        img = fn.hsv(fn.brightness_contrast(img, brightness=b, contrast=c), saturation=s, **out)
    else:
        img = fn.brightness_contrast(img, brightness=b, contrast=c, **out)
    return finish(img) if finish else img


def _colour_params(strong):
    from nvidia.dali import fn
    std, stg = IMAGE["standard"], IMAGE["strong"]
    jit = lambda a, b: 1.0 + fn.random.uniform(range=(-1.0, 1.0)) * _blend(strong, a, b)
    return jit(std.brightness, stg.brightness), jit(std.contrast, stg.contrast), jit(std.saturation, stg.saturation)


def image_eval_graph(jpegs, size: int, decode_device: str):
    from nvidia.dali import fn, types
    img = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB)
    return fn.resize(img, resize_x=size, resize_y=size, antialias=True)


def audio_graph(flac, strong, feat, train: bool, on_gpu: bool):
    from nvidia.dali import fn, math as dmath, types
    audio, _ = fn.decoders.audio(flac, dtype=types.FLOAT, downmix=True, sample_rate=feat.sample_rate)
    n = feat.samples
    length = fn.cast(audio.shape()[0], dtype=types.FLOAT)
    start = fn.random.uniform(range=(0.0, 1.0)) * dmath.max(length - n, 0.0) if train else 0.0
    audio = fn.slice(audio, fn.reshape(start, shape=[1]) if train else [0.0], [n], axes=[0],
                     out_of_bounds_policy="pad", normalized_anchor=False, normalized_shape=False)
    if train:
        std, stg = AUDIO["standard"], AUDIO["strong"]
        gain_db = fn.random.uniform(range=(-1.0, 1.0)) * _blend(strong, std.gain_db, stg.gain_db)
        sigma = fn.random.uniform(range=(0.0, 1.0)) * _blend(strong, std.noise, stg.noise)
        audio = audio * dmath.pow(10.0, gain_db / 20.0) + fn.random.normal(audio) * sigma
    if on_gpu:
        audio = audio.gpu()
    spec = fn.spectrogram(audio, nfft=feat.n_fft, window_length=feat.win_length, window_step=feat.hop_length,
                          center_windows=True, power=2)
    mel = fn.mel_filter_bank(spec, sample_rate=feat.sample_rate, nfilter=feat.n_mels,
                             freq_high=feat.sample_rate / 2.0, normalize=True, mel_formula="slaney")
    return fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=-80.0)


def build_pipeline(cfg, batch_size: int, on_gpu: bool, device_id, source, n_payload: int, seed: int):
    from nvidia.dali import fn, pipeline_def, types
    _guard_forks()
    # The training process's main thread mostly waits on DALI, so one thread more than this rank's
    # share of the cores keeps them busy (measured: +5% on 2 cores).
    share = (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    threads = max(2, min(_MAX_THREADS, share + 1))

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=2, exec_dynamic=True, enable_conditionals=True)
    def pipe():
        n_out = n_payload + (1 if cfg.augment else 0)
        outs = fn.external_source(source=source, num_outputs=n_out, batch=True,
                                  dtype=[types.UINT8] * n_payload + [types.FLOAT] * (n_out - n_payload))
        payload, strong = outs[:n_payload], (outs[n_payload] if cfg.augment else None)
        decode_device = "mixed" if on_gpu else "cpu"
        if cfg.modality == "audio":
            return audio_graph(payload[0], strong, cfg.audio, cfg.augment, on_gpu)
        if cfg.modality == "image":
            # Images are normalised where DALI runs (the GPU, or DALI's threads on a CPU) rather than on
            # the training process's main thread; the colour step then writes float straight into it.
            normalize = lambda x: fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW",
                                                           mean=[255.0 * m for m in MEAN], std=[255.0 * s for s in STD])
            if cfg.augment:
                return image_train_graph(payload[0], strong, cfg.image_size, decode_device, finish=normalize)
            return normalize(image_eval_graph(payload[0], cfg.image_size, decode_device))
        if cfg.augment:
            # one random draw per clip: the frames share the per-sample parameters
            return _video_train(payload, strong, cfg.image_size, decode_device)
        frames = [image_eval_graph(p, cfg.image_size, decode_device) for p in payload]
        return fn.transpose(fn.stack(*frames), perm=[0, 3, 1, 2])

    p = pipe()
    p.build()
    return p


def _video_train(payload, strong, size: int, decode_device: str):
    """Same crop, flip, rotation and colour for every frame of a clip."""
    from nvidia.dali import fn
    geometry, colour = _geometry(strong), _colour_params(strong)
    frames = [_colour(_crop_warp(jpeg, geometry, size, decode_device), strong, colour) for jpeg in payload]
    return fn.transpose(fn.stack(*frames), perm=[0, 3, 1, 2])


class Producer:
    """Feeds planned batches to one DALI pipeline; a batch DALI fails on is decoded again on the CPU."""

    def __init__(self, loader):
        self.loader = loader
        self.on_gpu = loader.device.type == "cuda"
        self.device_id = (loader.device.index or 0) if self.on_gpu else None
        self.pipe = None
        self.fed: deque = deque()
        self._iter = iter(())

    def _source(self):
        idx = next(self._iter)  # StopIteration here is how DALI learns that the epoch is over
        ld = self.loader
        comps, ok = [], np.ones(len(idx), bool)
        for j, i in enumerate(idx):
            c = ld.index.read(int(i))
            if c is None or not all(_plausible(b, ld.modality) for b in c):
                ok[j] = False
            else:
                comps.append(c)
        if not comps:  # nothing readable: hand DALI a stand-in and let the rescue path report it
            comps = [[np.frombuffer(b"\xff\xd8\xff\xd9", np.uint8)] * len(ld.index.exts)]
            ok[:] = False
        self.fed.append((idx, ok))
        labels = ld.index.labels[idx[ok]] if ok.any() else ld.index.labels[idx[:1]]
        strong = np.isin(labels, ld.cfg.minority).astype(np.float32) if ld.cfg.minority else np.zeros(len(labels), np.float32)
        cols = [[np.frombuffer(c[k], np.uint8) if isinstance(c[k], bytes) else c[k] for c in comps]
                for k in range(len(ld.index.exts))]
        if not ld.cfg.augment:
            return tuple(cols)
        return (*cols, [np.array(s, np.float32) for s in strong])

    def run(self, batches):
        ld = self.loader
        if not batches:
            return
        if self.pipe is None:
            self.pipe = build_pipeline(ld.cfg, ld.opts.batch_size, self.on_gpu, self.device_id, self._source,
                                       len(ld.index.exts), ld.opts.seed + 1000 * ld.rank)
        else:
            self.pipe.reset()
        self.fed.clear()
        self._iter = iter(batches)
        done = 0
        while done < len(batches):
            try:
                (out,) = self.pipe.run()
            except StopIteration:
                break
            except RuntimeError:
                # DALI could not decode something in this batch: decode it again sample by sample
                idx, _ = self.fed.popleft()
                yield self._rescue(idx, done)
                done += 1
                continue
            idx, ok = self.fed.popleft()
            yield self._to_torch(out), ok, idx
            done += 1

    def _to_torch(self, out) -> torch.Tensor:
        # No copy: with the dynamic executor a batch DALI hands out stays valid while referenced, and
        # DALI's own PyTorch iterator takes it the same way. Copying it cost ~19 ms a batch on a CPU.
        with self.loader.device:
            return torch.from_dlpack(out.as_tensor())

    def _rescue(self, idx, b):
        ld = self.loader
        data, ok = decode_batch(ld.index.read, idx, ld.index.labels[idx], ld.cfg, (ld.opts.seed, ld.epoch, ld.rank, b, 7))
        if data is not None and ld.modality == "audio":
            from ..augment import torch_log_mel
            data = torch_log_mel(data, ld.cfg.audio).squeeze(1)  # same (B, mels, frames) as the DALI output
        return data, ok, idx


def _plausible(b: bytes, modality: str) -> bool:
    """Cheap checks that catch truncated payloads before they reach a decoder."""
    if modality == "audio":
        return b[:4] == b"fLaC"
    return b[:2] == b"\xff\xd8" and b.rstrip(b"\x00")[-2:] == b"\xff\xd9"
