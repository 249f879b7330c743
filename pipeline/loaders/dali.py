"""DALI backend: planned samples' bytes go in through `external_source`; DALI decodes and augments.

Decoding runs on the GPU (`device="mixed"`) when the loader's device is CUDA and on DALI's CPU
threads otherwise: the graph functions are the same, only the device string changes.
Images: decode only the random crop (`decoders.image_slice`), then one fused warp (scale,
rotation, flip) in uint8, then the colour jitter written as float into the normalisation, all
where DALI runs; video frames stay uint8 and torch normalises them on the device.

Every random choice (crop window, flip, angle, colour factors; audio crop, gain and noise) is drawn
in numpy from the sample's key (seed, epoch, plan position) with the sample's recipe (standard, or
strong for a keyed share of either class: see `augment`) and fed beside the bytes, so a rebuilt or
resumed pipeline replays exactly the same augmentations; the graph itself draws nothing.
"""
from __future__ import annotations

import functools
import gc
import io
import os
from collections import deque

import numpy as np
import torch

from ..augment import (AUDIO_DRAWS, AUDIO_FIELDS, IMAGE, IMAGE_DRAWS, IMAGE_FIELDS, draw_audio,
                       draw_image, keyed_uniforms)
from ..errors import LoaderError
from .decode import Decodability, decodes

_MAX_THREADS = 8
_fork_guarded = False
_inherited = False


def _guard_forks() -> None:
    """A forked child (a DataLoader or packing worker, say) inherits this process's DALI pipelines and batches
    but not DALI's threads: if its cycle collector frees one, the child hangs or crashes (both seen, the crash
    inside threading's own after-fork hook, which runs before any hook registered here). So everything is frozen
    just before the fork, as gc.freeze's documentation advises for fork without exec: the child's collector never
    visits what it inherited, and what the child creates itself is collected as usual. The parent thaws at once
    unless it is itself such a child, whose inherited objects must stay frozen."""
    global _fork_guarded
    if not _fork_guarded:
        os.register_at_fork(before=gc.freeze, after_in_parent=_thaw, after_in_child=_mark_inherited)
        _fork_guarded = True


def _thaw() -> None:
    if not _inherited:
        gc.unfreeze()


def _mark_inherited() -> None:
    global _inherited
    _inherited = True


def image_train_graph(jpegs, params: dict, size: int, decode, finish=None):
    geometry = (params["anchor"], params["shape"], params["flip"], params["angle"])
    colour = (params["brightness"], params["contrast"], params["saturation"])
    return _colour(_crop_warp(jpegs, geometry, size, decode), params["strong"], colour, finish=finish)


def _crop_warp(jpegs, geometry, size: int, decode):
    """Decode only the crop window, then one warp: centre, flip, scale to size, rotate, re-centre.

    Nearest-neighbour sampling (torchvision's RandomRotation default) and black corners (its fill).
    `warp_perspective` (OpenCV's on a CPU) with the affine matrix as a 3x3 cost half of what
    `warp_affine` did here (0.5 vs 0.9 ms of CPU a sample, same geometry)."""
    from nvidia.dali import fn, types
    anchor, shape, flip, angle = geometry
    img = fn.decoders.image_slice(jpegs, anchor, shape, **_decoder(decode), output_type=types.RGB,
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


def _colour(img, strong, params, finish=None):
    """Brightness and contrast for every sample; saturation only where the recipe asks for it, i.e.
    for samples drawn to the strong recipe, through a DALI conditional so the others skip the cost.

    With `finish` (normalisation to float CHW) the colour ops write float into it, so pixel values are
    not clipped to [0, 255] before normalising. Writing uint8 costs a round-and-clamp per element:
    perf put `hsv` at 14% of a CPU pipeline's cycles with uint8 output and 5% with float. Normalising
    after the conditional also keeps the output one contiguous batch (no merge copy)."""
    from nvidia.dali import fn, types
    b, c, s = params
    out = {"dtype": types.FLOAT} if finish else {}  # without finish (video frames): uint8 out
    if IMAGE["strong"].saturation and strong > 0.5:
        img = fn.hsv(fn.brightness_contrast(img, brightness=b, contrast=c), saturation=s, **out)
    else:
        img = fn.brightness_contrast(img, brightness=b, contrast=c, **out)
    return finish(img) if finish else img


def image_eval_graph(jpegs, size: int, decode, interpolation: str = "bilinear"):
    from nvidia.dali import fn, types
    img = fn.decoders.image(jpegs, **_decoder(decode), output_type=types.RGB)
    interp = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC, "nearest": types.INTERP_NN}[interpolation]
    return fn.resize(img, resize_x=size, resize_y=size, antialias=True, interp_type=interp)


def audio_graph(flac, params, feat, on_gpu: bool, waveform: bool = False):
    """Decode, crop (random start in training, else from the start) or pad to a fixed length, gain and
    noise in training, then the log-mel spectrogram where DALI runs (`waveform`: the waveform itself, for
    SSL front-ends)."""
    from nvidia.dali import fn, math as dmath, types
    audio, _ = fn.decoders.audio(flac, dtype=types.FLOAT, downmix=True, sample_rate=feat.sample_rate)
    n = feat.samples
    if params:
        length = fn.cast(audio.shape()[0], dtype=types.FLOAT)
        start = fn.reshape(params["start"] * dmath.max(length - n, 0.0), shape=[1])
    else:
        start = [0.0]
    audio = fn.slice(audio, start, [float(n)], axes=[0], out_of_bounds_policy="pad", normalized_anchor=False,
                     normalized_shape=False)
    if params:
        audio = audio * params["gain"] + params["noise"] * params["sigma"]
    if on_gpu:
        audio = audio.gpu()
    if waveform:
        return audio
    # torchaudio's window (periodic Hann) so both backends compute the same features
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(feat.win_length) / feat.win_length)).tolist()
    spec = fn.spectrogram(audio, nfft=feat.n_fft, window_length=feat.win_length, window_step=feat.hop_length,
                          window_fn=window, center_windows=True, power=2)
    mel = fn.mel_filter_bank(spec, sample_rate=feat.sample_rate, nfilter=feat.n_mels,
                             freq_high=feat.sample_rate / 2.0, normalize=True, mel_formula="slaney")
    # as `augment.torch_log_mel`: power in dB (floored at 1e-10, i.e. -100 dB), then 80 dB below each clip's peak
    db = fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=-100.0)
    return dmath.max(db, fn.reductions.max(db) - 80.0)


def aug_fields(modality: str) -> tuple[str, ...]:
    """The per-sample inputs fed beside the payload in training, in feed order: the random parameters,
    and for images and video whether the sample gets the strong recipe (it gates saturation)."""
    return AUDIO_FIELDS if modality == "audio" else ("strong", *IMAGE_FIELDS)


def _threads() -> int:
    # The training process's main thread mostly waits on DALI, so one thread more than this rank's
    # share of the cores keeps them busy (measured: +5% on 2 cores).
    share = (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(2, min(_MAX_THREADS, share + 1))


def build_pipeline(cfg, batch_size: int, on_gpu: bool, device_id, source, n_payload: int, threads: int | None = None,
                   hw_decoder_load: float | None = None):
    """The graph takes every random choice as input (see `augment.draw_image`), so it has no seed of its own."""
    from nvidia.dali import fn, pipeline_def, types
    _guard_forks()
    fields = aug_fields(cfg.modality) if cfg.augment else ()

    @pipeline_def(batch_size=batch_size, num_threads=threads or _threads(), device_id=device_id, seed=0,
                  prefetch_queue_depth=2, exec_dynamic=True, enable_conditionals=True)
    def pipe():
        outs = fn.external_source(source=source, num_outputs=n_payload + len(fields), batch=True,
                                  dtype=[types.UINT8] * n_payload + [types.FLOAT] * len(fields))
        payload, params = outs[:n_payload], dict(zip(fields, outs[n_payload:]))
        decode = {"device": "mixed" if on_gpu else "cpu"}
        if on_gpu and hw_decoder_load is not None:
            decode["hw_decoder_load"] = hw_decoder_load
        if cfg.modality == "audio":
            return audio_graph(payload[0], params, cfg.audio, on_gpu, cfg.audio_input == "waveform")
        if cfg.modality == "image":
            # Images are normalised where DALI runs (the GPU, or DALI's threads on a CPU) rather than on
            # the training process's main thread; the colour step then writes float straight into it.
            normalize = lambda x: fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW",
                                                           mean=[255.0 * m for m in cfg.mean],
                                                           std=[255.0 * s for s in cfg.std])
            if params:
                return image_train_graph(payload[0], params, cfg.image_size, decode, finish=normalize)
            return normalize(image_eval_graph(payload[0], cfg.image_size, decode, cfg.interpolation))
        if params:  # one draw per clip: every frame gets the same crop, flip, rotation and colour
            frames = [image_train_graph(p, params, cfg.image_size, decode) for p in payload]
        else:
            frames = [image_eval_graph(p, cfg.image_size, decode, cfg.interpolation) for p in payload]
        return fn.transpose(fn.stack(*frames), perm=[0, 3, 1, 2])

    p = pipe()
    p.build()
    return p


class Producer:
    """Feeds planned batches to one DALI pipeline.

    A batch DALI fails on is checked sample by sample with a CPU decoder: the samples that do not
    decode are skipped and counted, and the pipeline is rebuilt and fed again from that batch (the
    random parameters are keyed by plan position, so the replay is the same). If every sample of the
    failed batch decodes, the error is DALI's own and is raised."""

    def __init__(self, loader):
        self.loader = loader
        self.on_gpu = loader.device.type == "cuda"
        self.device_id = (loader.device.index or 0) if self.on_gpu else None
        self.pipe = None
        self.fed: deque = deque()
        self._iter = iter(())
        self.bad: set[int] = set()  # sample indices found undecodable: never fed again
        self.rescued_batches = 0
        # DALI decodes damaged JPEGs into partly grey pictures without an error: where the shards do not
        # settle which samples decode, each is checked once as the torch backend and `dfp verify` check it
        self.decodable = Decodability(loader.index)

    def _source(self):
        b, idx = next(self._iter)  # StopIteration here is how DALI learns that the epoch is over
        ld = self.loader
        comps, ok = [], np.ones(len(idx), bool)
        wanted = [int(i) for i in idx if int(i) not in self.bad]
        many = getattr(ld.index, "read_many", None)
        got = dict(zip(wanted, many(wanted) if many else [ld.index.read(i) for i in wanted]))
        for j, i in enumerate(idx):
            c = got.get(int(i))
            if c is None or not all(_plausible(x, ld.modality) for x in c) or not self.decodable(int(i), c):
                ok[j] = False
            else:
                comps.append(c)
        self.fed.append((b, idx, ok))
        if not comps:  # nothing readable: a stand-in keeps DALI's batch non-empty; the loader drops it
            comps = [[_stand_in(ld.modality)] * len(ld.index.exts)]
        cols = [[np.frombuffer(c[k], np.uint8) if isinstance(c[k], bytes) else c[k] for c in comps]
                for k in range(len(ld.index.exts))]
        if not ld.cfg.augment:
            return tuple(cols)
        fed = ok if ok.any() else np.arange(len(idx)) == 0  # the stand-in takes the first slot
        return (*cols, *self._aug_columns(ld.sample_keys(b)[fed]))

    def _aug_columns(self, positions: np.ndarray) -> list:
        """The random parameters of the fed samples, each keyed by its own plan position (a skipped sample
        must not shift its neighbours' draws); the recipe too, so it says nothing of the sample's class."""
        ld = self.loader
        strong = ld.strong_views(positions)
        audio = ld.modality == "audio"
        u = keyed_uniforms(ld.opts.seed, ld.epoch, positions, AUDIO_DRAWS if audio else IMAGE_DRAWS)
        d = draw_audio(u, strong, ld.cfg.audio.samples) if audio else draw_image(u, strong)
        d["strong"] = strong.astype(np.float32)
        return [d[f] for f in aug_fields(ld.modality)]

    def run(self, batches):
        if not len(batches):
            return
        self._start(enumerate(batches))
        done = 0
        while done < len(batches):
            try:
                (out,) = self.pipe.run()
            except StopIteration:
                break
            except RuntimeError as e:
                b, idx, ok = self.fed[0]
                self._quarantine(idx, ok, e)
                self._start((k, batches[k]) for k in range(b, len(batches)))
                continue
            b, idx, ok = self.fed.popleft()
            done += 1
            if not ok.any():
                yield None, ok, idx
                continue
            yield self._to_torch(out), ok, idx

    def _start(self, items) -> None:
        ld = self.loader
        if self.pipe is None:
            self.pipe = build_pipeline(ld.cfg, ld.opts.batch_size, self.on_gpu, self.device_id, self._source,
                                       len(ld.index.exts), ld.opts.dali_threads, ld.opts.hw_decoder_load)
        else:
            self.pipe.reset()
        self.fed.clear()
        self._iter = iter(items)

    def _quarantine(self, idx, ok, error: Exception) -> None:
        ld = self.loader
        bad = [int(i) for i, o in zip(idx, ok) if o and not decodes(ld.index.read(int(i)), ld.modality, ld.cfg.audio)]
        if not bad:
            raise LoaderError(f"DALI failed on a batch of {ld.index.root} split {ld.index.split} whose samples all "
                              f"decode on the CPU: {_reason(error)}") from error
        self.bad.update(bad)
        self.rescued_batches += 1
        self.pipe = None  # after an error DALI's state is not to be trusted: build a fresh pipeline

    def _to_torch(self, out) -> torch.Tensor:
        # No copy: with the dynamic executor a batch DALI hands out stays valid while referenced, and
        # DALI's own PyTorch iterator takes it the same way. Copying it cost ~19 ms a batch on a CPU.
        with self.loader.device:
            return torch.from_dlpack(out.as_tensor())


def _decoder(decode) -> dict:
    """Decoder arguments: a device name, or a dict with the device and options such as `hw_decoder_load`
    (the share of JPEGs sent to the GPU's hardware decoder where there is one)."""
    return {"device": decode} if isinstance(decode, str) else dict(decode)


def _reason(error: Exception) -> str:
    """The informative line of a DALI error (its message opens with 'Critical error in pipeline:')."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    if "encountered:" in lines[:-1]:
        return lines[lines.index("encountered:") + 1][:300]
    rest = [ln for ln in lines if not ln.startswith("Critical error")]
    return (rest or lines or [type(error).__name__])[0][:300]


@functools.lru_cache(maxsize=None)
def _stand_in(modality: str) -> np.ndarray:
    """A tiny payload DALI decodes: fed in place of a batch whose samples are all unreadable."""
    buf = io.BytesIO()
    if modality == "audio":
        import soundfile as sf
        sf.write(buf, np.zeros(160, np.float32), 16000, format="FLAC")
    else:
        from PIL import Image
        Image.new("RGB", (8, 8)).save(buf, "JPEG")
    return np.frombuffer(buf.getvalue(), np.uint8)


def _plausible(b: bytes, modality: str) -> bool:
    """A cheap check of the format's magic before a payload reaches a decoder; a JPEG's end is `Decodability`'s."""
    if modality == "audio":
        return b[:4] == b"fLaC"
    if b[:8] == b"\x89PNG\r\n\x1a\n":  # --image-codec png: the IEND chunk closes a whole file
        return b[-12:-8] == b"\0\0\0\0" and b[-8:-4] == b"IEND"
    return b[:2] == b"\xff\xd8"
